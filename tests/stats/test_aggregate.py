"""aggregate.tick against a real PostgreSQL, checked row by row with tests/stats/kpi_reference.py."""

import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from reporting.settings import Settings, WorkerSettings
from reporting.stats import aggregate
from reporting.stats.ticks import TickResult
from tests.builders import Attempt, make_attempts, make_group, make_level, make_topic, make_user
from tests.conftest import make_settings
from tests.kpis import METRIC_KEYS
from tests.stats import kpi_reference as ref

# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def db(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a database of the test's own (a tick commits its steps)."""
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        yield conn


def worker_settings(db_url: str, **worker: object) -> Settings:
    return make_settings(db_url, worker=WorkerSettings(**worker))  # type: ignore[arg-type]


def load(conn: psycopg.Connection, school: ref.School) -> None:
    """Replace the directory and attempts with `school` (derived records are left alone)."""
    with conn.transaction():
        conn.execute("TRUNCATE attempts, user_groups, users, topics, levels, groups CASCADE")
        for group in school.groups:
            make_group(conn, group)
        for level in school.levels:
            make_level(conn, level.id, position=level.position)
        for topic in school.topics:
            make_topic(conn, topic.id, topic.level_id)
        for user in school.users:
            make_user(conn, user.id, list(user.group_ids), display_name=user.display_name)
        make_attempts(conn, list(school.attempts))


def close(actual: object, expected: object, where: str) -> None:
    """Equal, floats within 1e-9 relative; dicts must have exactly the same keys."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, int | float), where
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12), (  # type: ignore[arg-type]
            f"{where}: {actual} != {expected}"
        )
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def read_stats(conn: psycopg.Connection) -> list[dict[str, object]]:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM materialized_stats").fetchall()


def read_boards(conn: psycopg.Connection) -> list[dict[str, object]]:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM leaderboards").fetchall()


def read_progress(conn: psycopg.Connection) -> list[dict[str, object]]:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM progress_summary").fetchall()


def assert_matches_reference(
    conn: psycopg.Connection, school: ref.School, result: TickResult, size: int
) -> None:
    stats = read_stats(conn)
    expected_stats = ref.materialized_stats(school)
    assert {(r["type"], r["entity_id"]) for r in stats} == set(expected_stats)
    for row in stats:
        key = (str(row["type"]), str(row["entity_id"]))
        assert row["group_id"] == expected_stats[key].group_id, key
        assert row["computed_at"] == result.computed_at
        assert isinstance(row["metrics"], dict) and set(row["metrics"]) == METRIC_KEYS
        close(row["metrics"], expected_stats[key].metrics, f"{key}")

    boards = read_boards(conn)
    expected_boards = ref.leaderboards(school, size)
    assert {(b["scope"], b["scope_id"]) for b in boards} == set(expected_boards)
    for board in boards:
        key = (str(board["scope"]), str(board["scope_id"]))
        assert board["computed_at"] == result.computed_at
        assert board["expires_at"] == result.computed_at + timedelta(hours=24)
        close(board["rankings"], [vars(r) for r in expected_boards[key]], f"board {key}")

    summaries = read_progress(conn)
    expected_summaries = ref.progress_summaries(school)
    assert {s["user_id"] for s in summaries} == set(expected_summaries)
    for summary in summaries:
        user = str(summary["user_id"])
        want = expected_summaries[user]
        assert summary["computed_at"] == result.computed_at
        assert summary["last_activity_at"] == want.last_activity_at, user
        close(summary["totals"], want.totals, f"{user}.totals")
        close(summary["levels"], want.levels, f"{user}.levels")
        close(summary["topics"], want.topics, f"{user}.topics")

    assert result.attempts == len(school.attempts)
    assert result.users_with_attempts == len({a.user_id for a in school.attempts})
    assert sum(result.stats.values()) == len(expected_stats)
    assert result.leaderboards == len(expected_boards)
    assert result.progress_summaries == len(school.users)


# --- random schools ---------------------------------------------------------------------------------

# Ids exercise JSON escaping (quotes, backslashes, Cyrillic) and byte order (COLLATE "C").
# The last one imitates the marker an incremental tick looks for in a stored document
# (aggregate.LEVEL_INFO): inside a JSON string its quotes are escaped, so it must never match.
ID_PREFIXES = st.sampled_from(["a", "Я", 'q"', "s\\", "ü-", '{"level_id":"l0","topic_id":'])
# Dyadic scores: sums are exact in any order, so equal sums really are ties on both sides.
SCORES = st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.25])
MOMENTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))


@st.composite
def schools(draw: st.DrawFn) -> ref.School:
    def ids(kind: str, low: int, high: int) -> list[str]:
        count = draw(st.integers(low, high))
        return [f"{kind}{draw(ID_PREFIXES)}{i}" for i in range(count)]

    groups = ids("g", 1, 4)
    levels = [ref.Level(i, draw(st.integers(0, 2))) for i in ids("l", 1, 3)]
    topics = [ref.Topic(i, draw(st.sampled_from(levels)).id) for i in ids("t", 1, 5)]
    users = [
        ref.User(
            i,
            draw(st.sampled_from(["Иванова Анна", 'O"Brien', "Ли"])),
            tuple(draw(st.lists(st.sampled_from(groups), max_size=2, unique=True))),
        )
        for i in ids("u", 1, 7)
    ]
    attempts = []
    for _ in range(draw(st.integers(0, 30))):
        user = draw(st.sampled_from(users))
        attempts.append(
            Attempt(
                user_id=user.id,
                group_id=draw(st.sampled_from(list(user.group_ids) or groups)),
                topic_id=draw(st.sampled_from(topics)).id,
                is_correct=draw(st.booleans()),
                score=draw(SCORES),
                hints_used=draw(st.sampled_from([0, 0, 1, 3])),
                time_spent_ms=draw(st.integers(0, 120_000)),
                attempted_at=draw(MOMENTS),
            )
        )
    return ref.School(tuple(groups), tuple(levels), tuple(topics), tuple(users), tuple(attempts))


# Each example reloads the whole database first, so sharing the function-scoped one is safe.
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(school=schools(), size=st.integers(1, 4))
def test_every_derived_record_matches_the_reference(
    db: psycopg.Connection, fresh_db_url: str, school: ref.School, size: int
) -> None:
    load(db, school)
    result = aggregate.tick(db, worker_settings(fresh_db_url, REPORTING_LEADERBOARD_SIZE=size))
    assert_matches_reference(db, school, result, size)


# --- leaderboards -------------------------------------------------------------------------------


def tie_school() -> ref.School:
    """Five users in one group: scores 10, 8, 8, 5, 1; the two 8s differ in accuracy."""
    users = tuple(ref.User(f"u{i}", f"Ученик {i}", ("g1",)) for i in range(1, 6))

    def tries(user: str, scores: list[float], correct: list[bool]) -> list[Attempt]:
        return [
            Attempt(user, "g1", "t1", is_correct=c, score=s)
            for s, c in zip(scores, correct, strict=True)
        ]

    attempts = (
        tries("u5", [6, 4], [True, True])  # 10
        + tries("u1", [4, 4], [True, False])  # 8, accuracy 0.5
        + tries("u3", [8], [True])  # 8, accuracy 1.0: before u1 despite its id
        + tries("u4", [5], [False])  # 5
        + tries("u2", [1], [True])  # 1
    )
    return ref.School(
        ("g1",), (ref.Level("l1", 1),), (ref.Topic("t1", "l1"),), users, tuple(attempts)
    )


def test_leaderboard_keeps_the_top_n_with_shared_ranks(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    school = tie_school()
    load(db, school)
    aggregate.tick(db, worker_settings(fresh_db_url, REPORTING_LEADERBOARD_SIZE=4))
    for scope, scope_id in [("global", "global"), ("group", "g1"), ("level", "l1")]:
        row = db.execute(
            "SELECT rankings FROM leaderboards WHERE scope = %s AND scope_id = %s",
            (scope, scope_id),
        ).fetchone()
        assert row is not None
        rankings = row[0]
        assert [(r["user_id"], r["rank"]) for r in rankings] == [
            ("u5", 1),
            ("u3", 2),  # ties on score: the higher accuracy first, both ranked 2
            ("u1", 2),
            ("u4", 4),
        ]
        assert rankings[1] == {
            "rank": 2,
            "user_id": "u3",
            "display_name": "Ученик 3",
            "score": 8,
            "accuracy": 1,
            "attempts": 1,
        }


def test_expired_leaderboards_are_gone_after_a_tick(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    load(db, tie_school())
    long_ago = datetime.now(UTC) - timedelta(days=3)
    db.execute(
        "INSERT INTO leaderboards (scope, scope_id, rankings, computed_at, expires_at) VALUES"
        " ('group', 'g1', '[]', %(at)s, %(at)s + interval '24 hours'),"
        " ('level', 'a-level-that-no-longer-exists', '[]', %(at)s, %(at)s + interval '24 hours')",
        {"at": long_ago},
    )
    result = aggregate.tick(db, worker_settings(fresh_db_url))
    boards = read_boards(db)
    assert {(b["scope"], b["scope_id"]) for b in boards} == {
        ("global", "global"),
        ("group", "g1"),
        ("level", "l1"),
    }
    for board in boards:
        assert board["expires_at"] == result.computed_at + timedelta(hours=24)
        assert board["expires_at"] > datetime.now(UTC)  # type: ignore[operator]


def test_scopes_without_attempts_get_zero_rows_and_empty_boards(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    school = ref.School(
        groups=("g1", "g-empty"),
        levels=(ref.Level("l1", 1), ref.Level("l-empty", 2)),
        topics=(ref.Topic("t1", "l1"), ref.Topic("t-empty", "l-empty")),
        users=(ref.User("u1", "Анна", ("g1",)), ref.User("u-idle", "Пётр", ("g-empty",))),
        attempts=(Attempt("u1", "g1", "t1", score=2.0, hints_used=1, time_spent_ms=1500),),
    )
    load(db, school)
    result = aggregate.tick(db, worker_settings(fresh_db_url))
    assert_matches_reference(db, school, result, 100)
    zero = dict.fromkeys(METRIC_KEYS, 0)
    for entity in [("group", "g-empty"), ("level", "l-empty"), ("topic", "t-empty")]:
        row = db.execute(
            "SELECT metrics FROM materialized_stats WHERE type = %s AND entity_id = %s", entity
        ).fetchone()
        assert row is not None and row[0] == zero, entity
    assert not db.execute(
        "SELECT 1 FROM materialized_stats WHERE entity_id LIKE '%%empty%%' AND type LIKE 'group\\_%%'"
    ).fetchall()
    idle = db.execute(
        "SELECT totals, levels, topics, last_activity_at FROM progress_summary WHERE user_id = 'u-idle'"
    ).fetchone()
    assert idle == (
        {
            "attempts": 0,
            "correct": 0,
            "accuracy": 0,
            "score": 0,
            "hints_used": 0,
            "avg_time_seconds": 0,
        },
        [],
        [],
        None,
    )
    board = db.execute("SELECT rankings FROM leaderboards WHERE scope_id = 'g-empty'").fetchone()
    assert board == ([],)


# --- the swap -------------------------------------------------------------------------------------


def snapshot(conn: psycopg.Connection) -> tuple[object, ...]:
    """Everything a reader sees of the derived tables."""
    return tuple(
        sorted(json.dumps(row, default=str, sort_keys=True) for row in rows)
        for rows in (read_stats(conn), read_boards(conn), read_progress(conn))
    )


def test_a_failed_swap_changes_nothing_and_the_next_tick_retries(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    school = tie_school()
    load(db, school)
    first = aggregate.tick(db, worker_settings(fresh_db_url))
    before = snapshot(db)
    make_attempts(db, [Attempt("u2", "g1", "t1", score=100.0)])

    impatient = worker_settings(fresh_db_url, REPORTING_WORKER_LOCK_TIMEOUT_SECS=0.2)
    with psycopg.connect(fresh_db_url) as blocker:
        # SHARE lets readers in but not the swap's writes: its lock wait times out.
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            aggregate.tick(db, impatient)
        with psycopg.connect(fresh_db_url) as reader:
            assert snapshot(reader) == before  # complete, and the previous tick's
        blocker.rollback()

    failed = db.execute(
        "SELECT status, error, finished_at IS NOT NULL FROM worker_ticks ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert failed is not None and failed[0] == "error" and failed[2]
    assert "LockNotAvailable" in failed[1]
    assert stage_schemas(db) == []

    retried = aggregate.tick(db, worker_settings(fresh_db_url))
    assert retried.attempts == first.attempts + 1
    global_board = db.execute("SELECT rankings FROM leaderboards WHERE scope = 'global'").fetchone()
    assert global_board is not None and global_board[0][0]["user_id"] == "u2"


def stage_schemas(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'reporting\\_tick\\_%%'"
        )
    ]


def test_readers_see_the_old_tick_until_the_swap_commits(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    load(db, tie_school())
    aggregate.tick(db, worker_settings(fresh_db_url))
    before = snapshot(db)
    make_attempts(db, [Attempt("u4", "g1", "t1", score=50.0)])
    outcome: list[object] = []

    def run_tick() -> None:
        try:
            outcome.append(aggregate.tick(db, worker_settings(fresh_db_url)))
        except BaseException as error:
            outcome.append(error)

    with (
        psycopg.connect(fresh_db_url) as hold_swap,
        psycopg.connect(fresh_db_url) as hold_commit,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        # SHARE locks let readers in but stop writers: first the swap's opening LOCK waits...
        hold_swap.execute("LOCK TABLE progress_summary IN SHARE MODE")
        ticking = threading.Thread(target=run_tick, daemon=True)
        ticking.start()
        wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
        # ...then, let through, it deletes and re-inserts every derived row and waits again at
        # its last statement before COMMIT (closing the tick in worker_ticks).
        hold_commit.execute("LOCK TABLE worker_ticks IN SHARE MODE")
        hold_swap.rollback()
        wait_for_blocked(watcher, "UPDATE worker_ticks%")
        with psycopg.connect(fresh_db_url) as reader:
            assert snapshot(reader) == before
        hold_commit.rollback()
        ticking.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], TickResult), outcome
    assert snapshot(db) != before
    board = db.execute("SELECT rankings FROM leaderboards WHERE scope = 'global'").fetchone()
    assert board is not None and board[0][0]["user_id"] == "u4"


def wait_for_blocked(watcher: psycopg.Connection, query_like: str, timeout: float = 20.0) -> None:
    """Wait until a session of this database waits for a lock while running `query_like`."""
    deadline = time.monotonic() + timeout
    while not watcher.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        (query_like,),
    ).fetchone():
        assert time.monotonic() < deadline, f"nothing waited on a lock in {query_like!r}"
        time.sleep(0.02)


def test_the_swap_notifies_stats_changed(db: psycopg.Connection, fresh_db_url: str) -> None:
    load(db, tie_school())
    with psycopg.connect(fresh_db_url, autocommit=True) as listener:
        listener.execute("LISTEN stats_changed")
        result = aggregate.tick(db, worker_settings(fresh_db_url))
        notices = list(listener.notifies(timeout=5, stop_after=1))
    assert [json.loads(n.payload) for n in notices] == [
        {"tick_id": result.tick_id, "group_ids": None}
    ]


def test_worker_ticks_records_the_tick(db: psycopg.Connection, fresh_db_url: str) -> None:
    load(db, tie_school())
    result = aggregate.tick(db, worker_settings(fresh_db_url))
    row = db.execute(
        "SELECT status, started_at, finished_at, details, error FROM worker_ticks WHERE id = %s",
        (result.tick_id,),
    ).fetchone()
    assert row is not None
    status, started_at, finished_at, details, error = row
    assert (status, error) == ("success", None)
    assert started_at <= finished_at
    assert details["attempts"] == 7 and details["progress_summary"] == 5
    assert details["materialized_stats"] == {
        "group": 1,
        "level": 1,
        "topic": 1,
        "group_level": 1,
        "group_topic": 1,
    }
    assert set(details["durations"]) == {"setup", "per_user", "scopes", "swap"}
    assert stage_schemas(db) == []


def test_a_tick_refuses_a_connection_inside_a_transaction(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute("SELECT 1")  # opens a transaction (not autocommit)
        with pytest.raises(ValueError, match="outside any transaction"):
            aggregate.tick(conn, worker_settings(fresh_db_url))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM worker_ticks").fetchone() == (0,)


def test_discard_abandoned_drops_leftover_staging(db: psycopg.Connection) -> None:
    db.execute("CREATE SCHEMA reporting_tick_999")
    db.execute("CREATE UNLOGGED TABLE reporting_tick_999.rollup (a int)")
    db.execute(
        "INSERT INTO worker_ticks (started_at, status) VALUES (now() - interval '1 hour', 'running')"
    )
    assert aggregate.discard_abandoned(db) == 1
    assert stage_schemas(db) == []
    row = db.execute("SELECT status, error FROM worker_ticks").fetchone()
    assert row is not None and row[0] == "error" and "abandoned" in row[1]
