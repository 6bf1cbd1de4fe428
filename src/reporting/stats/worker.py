"""`reporting-worker`: runs `aggregate.tick` every REPORTING_WORKER_INTERVAL_SECS.

The loop owns everything around a tick: the schedule, the lock, metrics, logs and signals.

- Lock: each tick runs under `pg_try_advisory_lock(WORKER_LOCK)` on its own connection; when
  another worker holds it, this one records a `skipped` tick, logs it and waits for the next
  turn, so exactly one worker computes. The lock dies with the session, so a killed worker never
  blocks the others; the next one to get the lock discards what the dead one left.
- Failures: a failed tick changed nothing (its transaction rolled back); it is recorded in
  worker_ticks, counted, logged with its traceback and retried at the next turn.
- Signals: the first SIGTERM or SIGINT stops the loop between ticks; a tick in progress is let
  finish (seconds at most), so its work is not wasted. A second signal cancels that tick at once:
  its statement is cancelled and it rolls back, leaving the previous results in place. Either
  way the process exits normally, so the embedded PostgreSQL is released (NOTES.md).
- Exit code: 0 after a stop by signal; with `--once`, 0 when the tick succeeded or was skipped
  because another worker was computing, 1 when it failed.
"""

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from types import FrameType

import psycopg
from prometheus_client import start_http_server

from reporting import metrics
from reporting.settings import Settings
from reporting.stats import aggregate

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the analytics worker (any constant other lock users avoid).
WORKER_LOCK = 0x5245_5054_4943_4B  # "REPTICK"


class Outcome(Enum):
    SUCCESS = "success"
    SKIPPED = "skipped"
    ERROR = "error"


def run(
    settings: Settings,
    url: str,
    *,
    once: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    full: bool = False,
) -> int:
    """The worker's main loop; returns the process exit code.

    `full` is accepted for the command line's sake: every tick is a full one for now.
    """
    for status in ("success", "error"):
        metrics.analytics_worker_ticks_total.labels(status)  # exported as 0 from the start
    server = None
    if metrics_port is not None:
        try:
            server, _ = start_http_server(metrics_port, addr=metrics_host)
        except OSError as error:
            print(
                f"error: cannot serve metrics on {metrics_host}:{metrics_port}: {error}",
                file=sys.stderr,
            )
            return 2
        log.info("serving metrics", extra={"host": metrics_host, "port": metrics_port})
    stop = threading.Event()
    interval = settings.worker.interval_secs
    log.info(
        "analytics worker started",
        extra={"once": once, "interval_secs": interval, "full": full},
    )
    try:
        with _signals_stop(stop):
            next_at = time.monotonic()
            while True:
                outcome = run_once(settings, url)
                if once:
                    return 1 if outcome is Outcome.ERROR else 0
                # A fixed schedule (a slow tick does not push later ones back), but no burst of
                # catch-up ticks after a tick that outlasted the interval.
                next_at = max(next_at + interval, time.monotonic())
                if stop.wait(max(0.0, next_at - time.monotonic())):
                    break
        log.info("analytics worker stopped")
        return 0
    except KeyboardInterrupt:
        log.warning("analytics worker stopped by a second signal; the tick rolled back")
        return 1 if once else 0
    finally:
        if server is not None:
            server.shutdown()


def run_once(settings: Settings, url: str) -> Outcome:
    """One turn of the loop: a tick under the lock, or a recorded skip; never raises an Exception."""
    started = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True, application_name="reporting-worker") as conn:
            if not _try_lock(conn):
                _record_skip(conn)
                metrics.reporting_worker_skipped_ticks_total.inc()
                log.info("tick skipped: another analytics worker holds the lock")
                return Outcome.SKIPPED
            # The lock is held until this connection closes.
            aggregate.discard_abandoned(conn)
            result = aggregate.tick(conn, settings)
    except Exception:
        seconds = time.perf_counter() - started
        metrics.reporting_worker_errors_total.inc()
        metrics.analytics_worker_ticks_total.labels("error").inc()
        metrics.reporting_worker_tick_duration_seconds.observe(seconds)
        log.exception(
            "tick failed; retrying at the next turn", extra={"seconds": round(seconds, 3)}
        )
        return Outcome.ERROR
    seconds = time.perf_counter() - started
    metrics.reporting_worker_ticks_total.inc()
    metrics.analytics_worker_ticks_total.labels("success").inc()
    metrics.reporting_worker_tick_duration_seconds.observe(seconds)
    metrics.reporting_worker_last_success_timestamp_seconds.set_to_current_time()
    log.info(
        "tick done",
        extra={
            "tick_id": result.tick_id,
            "seconds": round(seconds, 3),
            "attempts": result.attempts,
            "users_with_attempts": result.users_with_attempts,
            "materialized_stats": sum(result.stats.values()),
            "leaderboards": result.leaderboards,
            "progress_summaries": result.progress_summaries,
            **{f"{phase}_seconds": value for phase, value in result.durations.items()},
        },
    )
    return Outcome.SUCCESS


def _try_lock(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (WORKER_LOCK,)).fetchone()
    return bool(row and row[0])


def _record_skip(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO worker_ticks (started_at, finished_at, status, details)"
        " VALUES (clock_timestamp(), clock_timestamp(), 'skipped',"
        ' \'{"reason": "another analytics worker holds the lock"}\')'
    )


@contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT: the first sets `stop`; a second raises KeyboardInterrupt, which psycopg
    turns into a cancel of the running statement."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info(
            "stopping after the current tick (send the signal again to cancel it)",
            extra={"signal": signal.Signals(signum).name},
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
