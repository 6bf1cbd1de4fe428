"""`reporting-worker` as a real process: --once, the lock, kills and signals, /metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from reporting.stats import worker as analytics_worker
from tests.builders import Attempt, make_attempts
from tests.db.test_priority import may_renice
from tests.ops.processes import service_env
from tests.stats.test_aggregate import (
    load,
    snapshot,
    stage_schemas,
    tie_school,
    wait_for_blocked,
    worker_settings,
)

pytestmark = pytest.mark.slow

WORKER = Path(sys.executable).parent / "reporting-worker"


@pytest.fixture
def db(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    """A database holding the five-user tie school; autocommit."""
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        load(conn, tie_school())
        yield conn


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A test that fails midway must not leave its worker running (killed, then reaped)."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def start(db_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    environ = service_env(
        database_url=db_url,
        data_dir=None,
        extra={"REPORTING_WORKER_LOCK_TIMEOUT_SECS": "60", **env},
    )
    process = subprocess.Popen(
        [str(WORKER), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _started.append(process)
    return process


def finish(
    process: subprocess.Popen[str], timeout: float = 60
) -> tuple[int, list[dict[str, object]]]:
    """Wait for the process; its exit code and its JSON log lines."""
    _, stderr = process.communicate(timeout=timeout)
    logs = []
    for line in stderr.splitlines():
        try:
            logs.append(json.loads(line))
        except json.JSONDecodeError:
            logs.append({"msg": line})
    return process.returncode, logs


def messages(logs: list[dict[str, object]]) -> list[str]:
    return [str(entry.get("msg")) for entry in logs]


def statuses(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT status FROM worker_ticks ORDER BY id")]


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_once_computes_and_exits_zero(db: psycopg.Connection, fresh_db_url: str) -> None:
    code, logs = finish(start(fresh_db_url, "--once"))
    assert code == 0, logs
    assert statuses(db) == ["success"]
    done = next(e for e in logs if e.get("msg") == "tick done")
    assert done["attempts"] == 7 and done["progress_summaries"] == 5
    assert db.execute("SELECT count(*) FROM materialized_stats").fetchone() == (5,)
    assert stage_schemas(db) == []


def test_a_bad_setting_stops_the_worker_with_one_line(fresh_db_url: str) -> None:
    code, logs = finish(start(fresh_db_url, "--once", REPORTING_WORKER_INTERVAL_SECS="soon"))
    assert code == 2
    assert len(logs) == 1 and "REPORTING_WORKER_INTERVAL_SECS" in str(logs[0]["msg"])


def test_a_failed_once_exits_nonzero_and_keeps_the_previous_results(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    assert finish(start(fresh_db_url, "--once"))[0] == 0
    before = snapshot(db)
    make_attempts(db, [Attempt("u2", "g1", "t1", score=100.0)])
    with psycopg.connect(fresh_db_url) as blocker:
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")  # readers pass, the swap not
        code, logs = finish(start(fresh_db_url, "--once", REPORTING_WORKER_LOCK_TIMEOUT_SECS="0.3"))
        assert snapshot(db) == before
    assert code == 1
    failure = next(e for e in logs if e.get("msg") == "tick failed; retrying at the next turn")
    assert "LockNotAvailable" in str(failure["exc"])
    assert statuses(db) == ["success", "error"]
    assert stage_schemas(db) == []


def test_a_failed_tick_counts_among_the_ticks_and_the_errors(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """reporting_worker_ticks_total is every tick, errors_total the failed ones (their ratio is
    the failed share); a skipped turn is neither."""
    names = ("reporting_worker_ticks_total", "reporting_worker_errors_total")

    def counts() -> tuple[float, ...]:
        return tuple(REGISTRY.get_sample_value(name) or 0.0 for name in names)

    settings = worker_settings(fresh_db_url, REPORTING_WORKER_LOCK_TIMEOUT_SECS=0.3)
    before = counts()
    with psycopg.connect(fresh_db_url) as blocker:
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")  # the swap cannot lock it
        assert analytics_worker.run_once(settings, fresh_db_url) is analytics_worker.Outcome.ERROR
    assert analytics_worker.run_once(settings, fresh_db_url) is analytics_worker.Outcome.SUCCESS
    with psycopg.connect(fresh_db_url) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (analytics_worker.WORKER_LOCK,))
        assert analytics_worker.run_once(settings, fresh_db_url) is analytics_worker.Outcome.SKIPPED

    assert tuple(a - b for a, b in zip(counts(), before, strict=True)) == (2, 1)


def test_two_workers_started_together_one_computes_the_other_skips(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    with (
        psycopg.connect(fresh_db_url) as blocker,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        # Hold the swap of whichever worker gets the lock, so the two surely overlap.
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")
        workers = [start(fresh_db_url, "--once"), start(fresh_db_url, "--once")]
        eventually(lambda: any(w.poll() is not None for w in workers))
        skipper = next(w for w in workers if w.poll() is not None)
        computer = next(w for w in workers if w is not skipper)
        wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
        blocker.rollback()
    skip_code, skip_logs = finish(skipper)
    code, logs = finish(computer)
    assert (skip_code, code) == (0, 0)
    assert "tick skipped: another analytics worker holds the lock" in messages(skip_logs)
    assert "tick done" not in messages(skip_logs)
    assert "tick done" in messages(logs)
    assert sorted(statuses(db)) == ["skipped", "success"]


def test_a_worker_killed_mid_swap_leaves_the_previous_results(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    assert finish(start(fresh_db_url, "--once"))[0] == 0
    before = snapshot(db)
    make_attempts(db, [Attempt("u4", "g1", "t1", score=50.0)])
    with (
        psycopg.connect(fresh_db_url) as hold_swap,
        psycopg.connect(fresh_db_url) as hold_commit,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        hold_swap.execute("LOCK TABLE progress_summary IN SHARE MODE")
        worker = start(fresh_db_url, "--once", "--full")
        wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
        # Let the swap delete and re-insert every derived row, then hold it before its COMMIT.
        hold_commit.execute("LOCK TABLE worker_ticks IN SHARE MODE")
        hold_swap.rollback()
        wait_for_blocked(watcher, "UPDATE worker_ticks%")
        worker.kill()
        assert finish(worker, timeout=10)[0] == -signal.SIGKILL
        assert snapshot(watcher) == before
        hold_commit.rollback()  # the orphaned backend goes on, finds its client gone, rolls back
        eventually(
            lambda: (
                watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE 'reporting-worker%%'"
                ).fetchone()
                == (0,)
            )
        )
    assert snapshot(db) == before  # complete, and the previous tick's
    assert statuses(db) == ["success", "running"]
    assert stage_schemas(db) != []  # the dead worker's staging is still there

    code, logs = finish(start(fresh_db_url, "--once"))
    assert code == 0
    assert "discarded an abandoned tick" in messages(logs)
    assert statuses(db) == ["success", "error", "success"]
    assert stage_schemas(db) == []
    board = db.execute("SELECT rankings FROM leaderboards WHERE scope = 'global'").fetchone()
    assert board is not None and board[0][0]["user_id"] == "u4"


def test_the_tick_runs_at_the_worker_niceness(db: psycopg.Connection, fresh_db_url: str) -> None:
    with (
        psycopg.connect(fresh_db_url) as hold_swap,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        hold_swap.execute("LOCK TABLE progress_summary IN SHARE MODE")
        worker = start(fresh_db_url, "--once", "--full", REPORTING_WORKER_NICE="6")
        wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
        row = watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'reporting-worker' AND wait_event_type = 'Lock'"
        ).fetchone()
        assert row is not None
        tick_niceness = os.getpriority(os.PRIO_PROCESS, row[0])
        # Any other backend of the server runs at the server's own niceness.
        usual = os.getpriority(os.PRIO_PROCESS, watcher.info.backend_pid)
        hold_swap.rollback()
        assert tick_niceness == (max(usual, 6) if may_renice(watcher) else usual)
    assert finish(worker)[0] == 0


def scrape(port: int) -> dict[str, float]:
    """The metric samples of /metrics, by `name{labels}`."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def scrape_once(port: int, sample: str, at_least: float) -> dict[str, float]:
    """The samples, once `sample` has reached `at_least` (the server may not be up yet)."""

    def reached() -> bool:
        try:
            return scrape(port).get(sample, 0) >= at_least
        except httpx.TransportError:
            return False

    eventually(reached)
    return scrape(port)


def test_metrics_port_serves_the_tick_counters_and_sigterm_stops_cleanly(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    port = free_port()
    worker = start(fresh_db_url, "--metrics-port", str(port), REPORTING_WORKER_INTERVAL_SECS="0.5")
    try:
        samples = scrape_once(port, "reporting_worker_ticks_total", 2)
    finally:
        worker.send_signal(signal.SIGTERM)
    code, logs = finish(worker, timeout=15)
    assert code == 0, logs
    assert samples['analytics_worker_ticks_total{status="success"}'] >= 2
    assert samples['analytics_worker_ticks_total{status="error"}'] == 0
    assert samples["reporting_worker_errors_total"] == 0
    assert samples["reporting_worker_tick_duration_seconds_count"] >= 2
    assert samples["reporting_worker_last_success_timestamp_seconds"] > time.time() - 60
    assert "analytics worker stopped" in messages(logs)
    assert set(statuses(db)) == {"success"}


def test_a_restarted_worker_reports_the_last_success_on_record_even_when_its_tick_fails(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """What ReportingWorkerNoRecentSuccess watches: from 0 after a restart, it said "no success
    since 1970" whenever the first tick of the new process failed."""
    assert finish(start(fresh_db_url, "--once"))[0] == 0
    row = db.execute(
        "SELECT extract(epoch FROM finished_at)::float8 FROM worker_ticks WHERE status = 'success'"
    ).fetchone()
    assert row is not None
    db.execute("ALTER TABLE progress_summary RENAME TO progress_summary_away")
    db.commit()
    port = free_port()
    worker = start(fresh_db_url, "--metrics-port", str(port))  # one tick an hour
    try:
        samples = scrape_once(port, 'analytics_worker_ticks_total{status="error"}', 1)
    finally:
        worker.send_signal(signal.SIGTERM)
        finish(worker, timeout=15)
        db.execute("ALTER TABLE progress_summary_away RENAME TO progress_summary")
        db.commit()
    assert samples["reporting_worker_last_success_timestamp_seconds"] == pytest.approx(
        row[0], abs=0.01
    )


def test_metrics_show_when_the_running_tick_started_and_zero_between_ticks(
    db: psycopg.Connection, fresh_db_url: str
) -> None:
    """What ReportingWorkerTickRunningLong watches: a tick stuck on a lock is visible while it
    runs (the duration histogram only sees ticks that ended)."""
    port = free_port()
    with (
        psycopg.connect(fresh_db_url) as blocker,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")
        before = time.time()
        worker = start(fresh_db_url, "--metrics-port", str(port))  # one tick an hour
        try:
            wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
            running = scrape(port)["reporting_worker_tick_started_timestamp_seconds"]
            blocker.rollback()
            eventually(lambda: statuses(db) == ["success"])
            eventually(lambda: scrape(port)["reporting_worker_tick_started_timestamp_seconds"] == 0)
        finally:
            worker.send_signal(signal.SIGTERM)
    code, logs = finish(worker, timeout=15)
    assert code == 0, logs
    assert before - 1 <= running <= time.time()


def test_sigterm_during_a_tick_lets_it_finish(db: psycopg.Connection, fresh_db_url: str) -> None:
    with (
        psycopg.connect(fresh_db_url) as blocker,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")
        worker = start(fresh_db_url)  # the loop, one tick an hour
        wait_for_blocked(watcher, "LOCK TABLE materialized_stats%")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.poll() is None  # still finishing its tick
        blocker.rollback()
    code, logs = finish(worker, timeout=30)
    assert code == 0, logs
    assert statuses(db) == ["success"]
    assert db.execute("SELECT count(*) FROM progress_summary").fetchone() == (5,)
    assert messages(logs)[-1] == "analytics worker stopped"


@pytest.mark.parametrize(
    ("args", "blocked_at"),
    [
        (["--full"], "LOCK TABLE materialized_stats%"),  # the full tick's swap
        ([], "%WITH per_topic AS MATERIALIZED%"),  # the incremental tick's last step (documents)
    ],
    ids=["full", "incremental"],
)
def test_a_second_signal_cancels_the_tick(
    db: psycopg.Connection, fresh_db_url: str, args: list[str], blocked_at: str
) -> None:
    assert finish(start(fresh_db_url, "--once"))[0] == 0
    before = snapshot(db)
    make_attempts(db, [Attempt("u2", "g1", "t1", score=100.0)])
    with (
        psycopg.connect(fresh_db_url) as blocker,
        psycopg.connect(fresh_db_url, autocommit=True) as watcher,
    ):
        blocker.execute("LOCK TABLE progress_summary IN SHARE MODE")
        worker = start(fresh_db_url, *args)
        wait_for_blocked(watcher, blocked_at)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        worker.send_signal(signal.SIGTERM)
        code, logs = finish(worker, timeout=15)  # while the swap's lock is still held
        assert snapshot(watcher) == before
    assert code == 0, logs
    assert "analytics worker stopped by a second signal; the tick rolled back" in messages(logs)
    assert statuses(db) == ["success", "error"]
    assert stage_schemas(db) == []
    assert db.execute("SELECT count(*) FROM attempt_queue").fetchone() == (1,)  # for the next tick


def test_a_busy_metrics_port_stops_the_worker_with_one_line(fresh_db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, logs = finish(start(fresh_db_url, "--metrics-port", str(port)))
    assert code == 2
    errors = [e for e in logs if str(e.get("msg", "")).startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in str(errors[0]["msg"])
