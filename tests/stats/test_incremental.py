"""incremental.tick against a real PostgreSQL, checked against a full recompute (aggregate.tick),
which tests/stats/test_aggregate.py checks against the plain-Python reference."""

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from reporting.db.channels import STATS_CHANGED
from reporting.db.schema import alembic_config
from reporting.settings import Settings
from reporting.stats import aggregate, incremental, state, worker
from reporting.stats.ticks import TickResult
from tests.builders import Attempt, make_attempts, make_level, make_topic, make_user
from tests.stats import kpi_reference as ref
from tests.stats.test_aggregate import close, load, schools, tie_school, worker_settings

Snapshot = dict[str, dict[tuple[str, str], object]]


@pytest.fixture
def db(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        yield conn


def snapshot(conn: psycopg.Connection) -> Snapshot:
    """Every derived record's content (not when it was computed), keyed as the API reads it."""
    cur = conn.cursor(row_factory=dict_row)
    stats = {
        (str(r["type"]), str(r["entity_id"])): {"group_id": r["group_id"], **r["metrics"]}
        for r in cur.execute("SELECT * FROM materialized_stats")
    }
    boards = {
        (str(r["scope"]), str(r["scope_id"])): r["rankings"]
        for r in cur.execute("SELECT * FROM leaderboards")
    }
    progress = {
        ("user", str(r["user_id"])): {
            "totals": r["totals"],
            "levels": r["levels"],
            "topics": r["topics"],
            "last_activity_at": r["last_activity_at"],
        }
        for r in cur.execute("SELECT * FROM progress_summary")
    }
    return {"stats": stats, "boards": boards, "progress": progress}


def assert_same(actual: Snapshot, expected: Snapshot) -> None:
    for kind in expected:
        assert set(actual[kind]) == set(expected[kind]), kind
        for key, value in expected[kind].items():
            close(actual[kind][key], value, f"{kind} {key}")


def documents(conn: psycopg.Connection) -> dict[str, tuple[str, str, str]]:
    """Every progress document as stored text: incremental ticks splice `topics` as text."""
    return {
        str(r[0]): (str(r[1]), str(r[2]), str(r[3]))
        for r in conn.execute(
            "SELECT user_id, totals::text, levels::text, topics::text FROM progress_summary"
        )
    }


def assert_a_full_recompute_agrees(
    conn: psycopg.Connection, settings: Settings, *, same_text: bool = False
) -> TickResult:
    """Run a full tick over what the incremental ticks produced; every record must stay (and,
    with `same_text`, every progress document byte for byte: sums that are exact in any order,
    such as dyadic scores, print the same)."""
    before, texts = snapshot(conn), documents(conn)
    full = aggregate.tick(conn, settings)
    assert_same(before, snapshot(conn))
    if same_text:
        assert texts == documents(conn)
    return full


def queued(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM attempt_queue").fetchone()
    assert row is not None
    return int(row[0])


def fresh_load(conn: psycopg.Connection, school: ref.School) -> None:
    load(conn, school)
    conn.execute("TRUNCATE attempt_queue")  # `load` truncates attempts, which queues nothing


def tick_incrementally(conn: psycopg.Connection, settings: Settings) -> TickResult:
    result = incremental.tick(conn, settings)
    assert result is not None, "the running sums should be valid here"
    assert result.mode == "incremental"
    return result


# --- exactness against a full recompute -----------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    school=schools(),
    extra=st.data(),
    size=st.integers(1, 4),
)
def test_interleaved_batches_and_ticks_equal_a_full_recompute(
    db: psycopg.Connection, fresh_db_url: str, school: ref.School, extra: st.DataObject, size: int
) -> None:
    settings = worker_settings(fresh_db_url, REPORTING_LEADERBOARD_SIZE=size)
    attempts = list(school.attempts)
    first = extra.draw(st.integers(0, len(attempts)), label="attempts before the full tick")
    fresh_load(db, dataclasses.replace(school, attempts=tuple(attempts[:first])))
    aggregate.tick(db, settings)
    assert state.is_valid(db, settings.worker.leaderboard_size) and queued(db) == 0

    rest = attempts[first:]
    while rest:
        size_of_batch = extra.draw(st.integers(1, len(rest)), label="batch")
        batch, rest = rest[:size_of_batch], rest[size_of_batch:]
        make_attempts(db, batch)
        if extra.draw(st.booleans(), label="tick after this batch"):
            tick_incrementally(db, settings)
    result = tick_incrementally(db, settings)
    assert queued(db) == 0
    assert assert_a_full_recompute_agrees(db, settings, same_text=True).mode == "full"
    if len(attempts) > first:
        assert result.tick_id or result.attempts == 0


def test_leaderboard_ties_stay_exact_when_ranks_shift(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url, REPORTING_LEADERBOARD_SIZE=3)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    # u2 (score 1) climbs to 8, tying u1 and u3 (ranks 2, 2, 2) and pushing u4 off the top 3.
    make_attempts(db, [Attempt("u2", "g1", "t1", is_correct=True, score=7)])
    result = tick_incrementally(db, settings)
    assert result.attempts == 1
    row = db.execute("SELECT rankings FROM leaderboards WHERE scope = 'group'").fetchone()
    assert row is not None
    assert [(r["user_id"], r["rank"]) for r in row[0]] == [("u5", 1), ("u2", 2), ("u3", 2)]
    assert_a_full_recompute_agrees(db, settings)


def test_equal_totals_tie_however_their_scores_were_added_up(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 are both 0.6 to anyone but a float: the three rank 1,
    in user id order (their accuracies are equal), in the full tick and the incremental one."""
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    for user in ("ux", "uy", "uz"):
        make_user(db, user, ["g1"])
    aggregate.tick(db, settings)
    for score in (0.1, 0.2, 0.3):  # one tick after each, as live ingestion adds them up
        make_attempts(db, [Attempt("ux", "g1", "t1", is_correct=True, score=score)])
        tick_incrementally(db, settings)
    make_attempts(
        db,
        [Attempt("uy", "g1", "t1", is_correct=True, score=0.6)]
        + [Attempt("uz", "g1", "t1", is_correct=True, score=s) for s in (0.3, 0.2, 0.1)],
    )
    tick_incrementally(db, settings)

    def tied() -> list[tuple[str, int]]:
        row = db.execute("SELECT rankings FROM leaderboards WHERE scope = 'group'").fetchone()
        assert row is not None
        return [(r["user_id"], r["rank"]) for r in row[0] if r["user_id"] in ("ux", "uy", "uz")]

    ranks = [rank for _, rank in tied()]
    assert tied() == [("ux", ranks[0]), ("uy", ranks[0]), ("uz", ranks[0])]
    assert_a_full_recompute_agrees(db, settings)
    assert tied() == [("ux", ranks[0]), ("uy", ranks[0]), ("uz", ranks[0])]


def test_documents_that_lost_entries_are_rebuilt_whole(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """A tick splices the touched levels' entries into the stored text, found by the levels'
    markers; where the stored text lacks a marker the sums say it has, it rebuilds the whole
    document instead of splicing at a wrong place."""
    settings = worker_settings(fresh_db_url)
    school = tie_school()
    load(db, school)
    make_level(db, "l2", position=1)
    make_topic(db, "t2", "l2")
    make_attempts(db, [Attempt("u1", "g1", "t2", score=3), Attempt("u2", "g1", "t2", score=1)])
    db.execute("TRUNCATE attempt_queue")
    aggregate.tick(db, settings)
    expected = documents(db)
    db.execute("UPDATE progress_summary SET topics = '[]' WHERE user_id = 'u1'")
    db.execute("UPDATE progress_summary SET levels = '[]' WHERE user_id = 'u2'")
    # New attempts of u1 in level l2 only: a splice would keep the lost t1 entry lost.
    make_attempts(db, [Attempt("u1", "g1", "t2", score=2), Attempt("u2", "g1", "t2", score=2)])
    tick_incrementally(db, settings)
    topics = json.loads(documents(db)["u1"][2])
    assert [t["topic_id"] for t in topics] == ["t1", "t2"]
    assert topics[1]["attempts"] == 2 and topics[0] == json.loads(expected["u1"][2])[0]
    assert [lv["level_id"] for lv in json.loads(documents(db)["u2"][1])] == ["l1", "l2"]
    assert_a_full_recompute_agrees(db, settings, same_text=True)


# --- what a tick consumes ------------------------------------------------------------------------


def test_ingestion_during_ticks_loses_and_double_counts_nothing(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    batches = 40
    stop = threading.Event()
    ticks: list[int] = []

    def tick_forever() -> None:
        with psycopg.connect(fresh_db_url, autocommit=True) as conn:
            while not stop.is_set():
                result = incremental.tick(conn, settings)
                assert result is not None
                ticks.append(result.attempts)

    ticker = threading.Thread(target=tick_forever)
    ticker.start()
    try:
        with psycopg.connect(fresh_db_url, autocommit=True) as writer:
            for i in range(batches):
                make_attempts(
                    writer,
                    [
                        Attempt(f"u{1 + (i + j) % 5}", "g1", "t1", is_correct=j % 2 == 0, score=1)
                        for j in range(25)
                    ],
                )
    finally:
        stop.set()
        ticker.join(timeout=60)
    tick_incrementally(db, settings)
    assert sum(ticks) <= batches * 25
    row = db.execute(
        "SELECT (metrics->>'total_attempts')::int FROM materialized_stats WHERE type = 'group'"
    ).fetchone()
    assert row is not None and row[0] == len(tie_school().attempts) + batches * 25
    assert queued(db) == 0
    assert sum(ticks) > 0, "no tick ran while the batches came"
    assert_a_full_recompute_agrees(db, settings)


def test_attempts_committed_after_a_full_ticks_snapshot_wait_for_the_next_tick(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    make_attempts(db, [Attempt("u1", "g1", "t1", score=2)])
    with psycopg.connect(fresh_db_url) as late:
        make_attempts(late, [Attempt("u2", "g1", "t1", score=3)])  # not committed yet
        full = aggregate.tick(db, settings)
        late.commit()
    assert full.attempts == len(tie_school().attempts) + 1
    assert queued(db) == 1  # the full tick consumed only what its snapshot counted
    result = tick_incrementally(db, settings)
    assert result.attempts == 1 and queued(db) == 0
    assert_a_full_recompute_agrees(db, settings)


def test_a_directory_change_makes_the_next_tick_full(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    assert not state.is_valid(db, settings.worker.leaderboard_size)  # never built
    assert worker.run_once(settings, fresh_db_url) is worker.Outcome.SUCCESS
    assert state.is_valid(db, settings.worker.leaderboard_size)
    make_attempts(db, [Attempt("u1", "g1", "t1")])
    assert worker.run_once(settings, fresh_db_url) is worker.Outcome.SUCCESS
    make_user(db, "u-new", ["g1"], display_name="Новенький")
    assert not state.is_valid(db, settings.worker.leaderboard_size)
    assert incremental.tick(db, settings) is None
    assert worker.run_once(settings, fresh_db_url) is worker.Outcome.SUCCESS
    modes = [
        r[0]
        for r in db.execute(
            "SELECT details->>'mode' FROM worker_ticks WHERE status = 'success' ORDER BY id"
        )
    ]
    assert modes == ["full", "incremental", "full"]
    row = db.execute("SELECT totals FROM progress_summary WHERE user_id = 'u-new'").fetchone()
    assert row is not None and row[0]["attempts"] == 0


def test_a_new_leaderboard_size_makes_the_next_tick_full(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """Incremental ticks recompute only the boards their attempts touch: after a change of
    REPORTING_LEADERBOARD_SIZE, every board is cut anew by a full tick."""
    fresh_load(db, tie_school())
    assert worker.run_once(worker_settings(fresh_db_url), fresh_db_url) is worker.Outcome.SUCCESS
    smaller = worker_settings(fresh_db_url, REPORTING_LEADERBOARD_SIZE=2)
    assert not state.is_valid(db, 2)

    assert worker.run_once(smaller, fresh_db_url) is worker.Outcome.SUCCESS  # no new attempts

    modes = [r[0] for r in db.execute("SELECT details->>'mode' FROM worker_ticks ORDER BY id")]
    assert modes == ["full", "full"]
    assert db.execute("SELECT count(*) FROM leaderboards").fetchone() == (3,)  # global, g1, l1
    sizes = {len(r[0]) for r in db.execute("SELECT rankings FROM leaderboards")}
    assert sizes == {2}  # the global board and g1's held all 5 students before
    assert state.is_valid(db, 2)
    # The sentinel of a worker from before the size was recorded: not trusted either.
    db.execute(f"ALTER TABLE {state.SCHEMA}.{state.SENTINEL} DROP COLUMN leaderboard_size")
    assert not state.is_valid(db, 2)
    assert worker.run_once(smaller, fresh_db_url) is worker.Outcome.SUCCESS
    make_attempts(db, [Attempt("u5", "g1", "t1", score=100)])
    assert worker.run_once(smaller, fresh_db_url) is worker.Outcome.SUCCESS
    modes = [r[0] for r in db.execute("SELECT details->>'mode' FROM worker_ticks ORDER BY id")]
    assert modes == ["full", "full", "full", "incremental"]


def test_an_upsert_that_changes_nothing_keeps_the_sums_valid(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    db.execute("UPDATE users SET display_name = display_name WHERE false")
    assert state.is_valid(db, settings.worker.leaderboard_size)


def test_sums_of_the_previous_layout_are_not_trusted_after_the_upgrade(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """Migration 0003 changed the sums' layout: sums an older worker left valid must not be
    updated by this one (its SQL would fail on them every tick)."""
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    config = alembic_config(fresh_db_url)
    command.downgrade(config, "0002")
    # As an older worker would have left them: sums marked valid (with today's sentinel, so that
    # only the migration makes them invalid).
    size = settings.worker.leaderboard_size
    db.execute(
        f"CREATE TABLE {state.SCHEMA}.{state.SENTINEL}"
        f" AS SELECT 1::bigint AS tick_id, {size}::int AS leaderboard_size"
    )
    assert state.is_valid(db, size)
    command.upgrade(config, "head")
    assert not state.is_valid(db, settings.worker.leaderboard_size)
    assert incremental.tick(db, settings) is None
    assert worker.run_once(settings, fresh_db_url) is worker.Outcome.SUCCESS
    assert state.is_valid(db, settings.worker.leaderboard_size)


def test_sums_emptied_by_a_crash_are_not_trusted(db: psycopg.Connection, fresh_db_url: str) -> None:
    """Crash recovery empties UNLOGGED tables; the sentinel row goes with them."""
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    db.execute(f"TRUNCATE {state.SCHEMA}.{state.SENTINEL}")
    assert not state.is_valid(db, settings.worker.leaderboard_size)
    assert incremental.tick(db, settings) is None


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM attempts WHERE event_id = (SELECT min(event_id) FROM attempts)",
        "UPDATE attempts SET score = score + 1 WHERE event_id = (SELECT min(event_id) FROM attempts)",
        "TRUNCATE attempts",
        "TRUNCATE topics CASCADE",
    ],
)
def test_removing_or_changing_attempts_makes_the_next_tick_a_full_one(
    db: psycopg.Connection, fresh_db_url: str, statement: str
) -> None:
    """Incremental ticks only add what was queued: sums that still count removed or changed
    attempts must not be built on (an operator's DELETE, a test harness's TRUNCATE)."""
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    db.execute("DELETE FROM attempts WHERE false")  # a statement that removes nothing
    assert state.is_valid(db, settings.worker.leaderboard_size)
    db.execute(statement)
    assert not state.is_valid(db, settings.worker.leaderboard_size)
    assert incremental.tick(db, settings) is None
    assert worker.run_once(settings, fresh_db_url) is worker.Outcome.SUCCESS
    row = db.execute(
        "SELECT details->>'mode' FROM worker_ticks ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert row == ("full",)
    assert state.is_valid(db, settings.worker.leaderboard_size)
    assert_a_full_recompute_agrees(db, settings)


def test_a_failed_incremental_tick_changes_nothing_and_keeps_the_queue(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    before = snapshot(db)
    make_attempts(db, [Attempt("u1", "g1", "t1", score=5)])
    # Lock a derived row the tick must update: its lock_timeout fails it midway.
    with psycopg.connect(fresh_db_url) as blocker:
        blocker.execute("SELECT * FROM materialized_stats WHERE type = 'group' FOR UPDATE")
        failing = worker_settings(fresh_db_url, REPORTING_WORKER_LOCK_TIMEOUT_SECS=0.2)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            incremental.tick(db, failing)
    assert snapshot(db) == before
    assert queued(db) == 1
    row = db.execute(
        "SELECT status, details->>'mode' FROM worker_ticks ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert row == ("error", "incremental")
    tick_incrementally(db, settings)
    assert queued(db) == 0


# --- notifications and idle ticks ---------------------------------------------------------------


def test_a_tick_names_the_groups_it_changed(db: psycopg.Connection, fresh_db_url: str) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    with psycopg.connect(fresh_db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {STATS_CHANGED}")
        idle = tick_incrementally(db, settings)
        assert idle.tick_id == 0 and idle.attempts == 0
        assert list(listener.notifies(timeout=0.5)) == []  # nothing new: no notification

        make_attempts(db, [Attempt("u3", "g1", "t1")])
        result = tick_incrementally(db, settings)
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert len(notes) == 1
    assert notes[0].payload == (
        f'{{"tick_id": {result.tick_id}, "mode": "incremental", "group_ids": ["g1"]}}'
    )


def test_boards_not_recomputed_for_an_hour_are_refreshed(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    settings = worker_settings(fresh_db_url)
    fresh_load(db, tie_school())
    aggregate.tick(db, settings)
    old = datetime.now(UTC) - timedelta(hours=23, minutes=30)
    db.execute(
        "UPDATE leaderboards SET computed_at = %s, expires_at = %s",
        (old, old + timedelta(hours=24)),
    )
    result = tick_incrementally(db, settings)
    assert result.leaderboards == 3 and result.attempts == 0
    rows = db.execute("SELECT computed_at, expires_at FROM leaderboards").fetchall()
    for computed_at, expires_at in rows:
        assert computed_at == result.computed_at
        assert expires_at == result.computed_at + timedelta(hours=24)


def test_a_full_tick_by_the_worker_vacuums_what_it_rewrote(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    fresh_load(db, tie_school())
    assert worker.run_once(worker_settings(fresh_db_url), fresh_db_url, full=True) is (
        worker.Outcome.SUCCESS
    )
    for _ in range(50):
        db.execute("SELECT pg_stat_clear_snapshot()")
        rows = db.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL"
            " AND relname IN ('materialized_stats', 'leaderboards', 'progress_summary')"
        ).fetchall()
        if len(rows) == 3:
            break
        time.sleep(0.1)
    assert sorted(r[0] for r in rows) == ["leaderboards", "materialized_stats", "progress_summary"]
