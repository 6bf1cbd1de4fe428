"""`reporting-worker`: runs `aggregate.tick` every REPORTING_WORKER_INTERVAL_SECS.

The loop owns everything around a tick: the schedule, the lock, metrics, logs and signals.

- Lock: each tick runs under `pg_try_advisory_lock(WORKER_LOCK)` on its own connection; when
  another worker holds it, this one records a `skipped` tick, logs it and waits for the next
  turn, so exactly one worker computes. The lock dies with the session, so a killed worker never
  blocks the others; the next one to get the lock discards what the dead one left.
- Failures: a failed tick changed nothing (its transaction rolled back); it is recorded in
  worker_ticks, counted, logged with its traceback and retried at the next turn.
- Signals (reporting/shutdown.py): the first SIGTERM or SIGINT stops the loop between ticks; a
  tick in progress is let finish (seconds at most), so its work is not wasted. A second signal
  cancels that tick at once: it rolls back, leaving the previous results in place.
- Exit code: 0 after a stop by signal; with `--once`, 0 when the tick succeeded or was skipped
  because another worker was computing, 1 when it failed.
- CPU priority: when PostgreSQL runs on this machine, the tick's backends run at niceness
  REPORTING_WORKER_NICE (db/priority.py), so the API's readers get the cores first.
- Kind of tick: incremental (stats/incremental.py) whenever the running sums are valid, else
  full (aggregate.py), which rebuilds them; `--full` makes every tick a full one.
- Live updates (REPORTING_ENABLE_LIVE_UPDATES): a thread LISTENs on `attempts_ingested` (and on
  `directory_changed`: a directory change makes the next tick a full one) and wakes
  the loop, which ticks (incrementally) once the burst has settled for LIVE_DEBOUNCE_SECS; the
  scheduled ticks go on as before. A notification lost while
  the listener reconnects costs nothing: the attempts wait in the queue for the next tick, and
  the listener wakes the loop after every reconnect.
"""

import logging
import threading
import time
from enum import Enum

import psycopg

from reporting import metrics, shutdown
from reporting.db import channels
from reporting.db.priority import lower_backend_priority
from reporting.settings import Settings
from reporting.stats import aggregate, incremental, ticks
from reporting.stats.ticks import TickResult

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the analytics worker (any constant other lock users avoid).
WORKER_LOCK = 0x5245_5054_4943_4B  # "REPTICK"

# A batch of ingestion usually comes as several notifications within milliseconds: one tick.
LIVE_DEBOUNCE_SECS = 0.2


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
    """The worker's main loop; returns the process exit code."""
    metrics.expose_worker_gauges()
    for status in ("success", "error"):
        metrics.analytics_worker_ticks_total.labels(status)  # exported as 0 from the start
    server = None
    if metrics_port is not None:
        server = metrics.serve(metrics_port, metrics_host)
        if server is None:
            return 2
    _restore_last_success(url)
    stop = threading.Event()
    wake = threading.Event()  # set by a stop or an ingestion notification
    live = settings.worker.enable_live_updates and not once
    interval = settings.worker.interval_secs
    log.info(
        "analytics worker started",
        extra={"once": once, "interval_secs": interval, "full": full, "live_updates": live},
    )
    listener = _IngestListener(url, wake) if live else None
    try:
        with shutdown.stop_on_signals(stop, finishing="the tick", wake=wake.set):
            if listener is not None:
                listener.start()
            next_at = time.monotonic()
            scheduled = True
            while True:
                # A live tick that finds another worker ticking leaves no "skipped" row: live
                # ticks may come every second, and the attempts wait in the queue meanwhile.
                outcome = run_once(settings, url, full=full, record_skip=scheduled)
                if once:
                    return 1 if outcome is Outcome.ERROR else 0
                if scheduled:
                    # A fixed schedule (a slow tick does not push later ones back), but no burst
                    # of catch-up ticks after a tick that outlasted the interval.
                    next_at = max(next_at + interval, time.monotonic())
                turn = _next_turn(stop, wake, listener, next_at)
                if turn is None:
                    break
                scheduled = turn
        log.info("analytics worker stopped")
        return 0
    except KeyboardInterrupt:
        log.warning("analytics worker stopped by a second signal; the tick rolled back")
        return 1 if once else 0
    finally:
        if listener is not None:
            listener.stop()
        if server is not None:
            server.shutdown()


def run_once(
    settings: Settings, url: str, *, full: bool = False, record_skip: bool = True
) -> Outcome:
    """One turn of the loop: a tick under the lock (incremental unless `full` or the running sums
    are not valid), or a skip (recorded unless `record_skip` is false); never raises an Exception.
    """
    started = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True, application_name="reporting-worker") as conn:
            if not _try_lock(conn):
                metrics.reporting_worker_skipped_ticks_total.inc()
                if record_skip:
                    ticks.record_skip(conn)
                    log.info("tick skipped: another analytics worker holds the lock")
                return Outcome.SKIPPED
            # The lock is held until this connection closes.
            metrics.reporting_worker_tick_started_timestamp_seconds.set_to_current_time()
            try:
                lower_backend_priority(conn, settings.worker.nice)
                aggregate.discard_abandoned(conn)
                result = _tick(conn, settings, full=full)
            finally:
                metrics.reporting_worker_tick_started_timestamp_seconds.set(0)
    except Exception:
        seconds = time.perf_counter() - started
        metrics.reporting_worker_ticks_total.inc()
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
    if result.mode == "incremental" and not result.tick_id:
        log.debug("tick done: nothing new", extra={"seconds": round(seconds, 3)})
        return Outcome.SUCCESS
    log.info(
        "tick done",
        extra={
            "mode": result.mode,
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


def _restore_last_success(url: str) -> None:
    """Start the last-success gauge where the database's record of ticks says: from 0, a worker
    restarted with a failing first tick read as "no success since 1970" to the alert on it."""
    try:
        with psycopg.connect(url, autocommit=True, application_name="reporting-worker") as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(finished_at))::float8 FROM worker_ticks"
                " WHERE status = 'success'"
            ).fetchone()
    except psycopg.Error as error:  # the first tick will say more
        log.warning("cannot read the last successful tick", extra={"error": str(error)})
        return
    if row is not None and row[0] is not None:
        metrics.reporting_worker_last_success_timestamp_seconds.set(float(row[0]))


def _tick(conn: psycopg.Connection, settings: Settings, *, full: bool) -> TickResult:
    if not full:
        result = incremental.tick(conn, settings)
        if result is not None:
            return result
        log.info("running sums not valid (first tick, directory change or --full): full tick")
    result = aggregate.tick(conn, settings)
    log.info("derived tables vacuumed", extra={"seconds": aggregate.vacuum_derived(conn)})
    return result


def _next_turn(
    stop: threading.Event,
    wake: threading.Event,
    listener: "_IngestListener | None",
    next_at: float,
) -> bool | None:
    """Block until the next tick is due: True at the scheduled time, False when new attempts
    came (live updates), None when the worker should stop."""
    while True:
        # The setters raise their flag before ringing `wake`: clearing first loses no ring.
        wake.clear()
        if stop.is_set():
            return None
        if listener is not None and listener.pending.is_set():
            if stop.wait(LIVE_DEBOUNCE_SECS):  # let the burst settle
                return None
            listener.pending.clear()
            return False
        remaining = next_at - time.monotonic()
        if remaining <= 0:
            return True
        wake.wait(remaining)


class _IngestListener:
    """LISTEN attempts_ingested and directory_changed on a connection of its own, in a daemon
    thread; raises `pending` (and rings `wake`) for every notification and after every
    (re)connection."""

    def __init__(self, url: str, wake: threading.Event, *, retry_secs: float = 1.0) -> None:
        self.url = url
        self.wake = wake
        self.retry_secs = retry_secs
        self.pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _ring(self) -> None:
        self.pending.set()
        self.wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url,
                    autocommit=True,
                    application_name=channels.LIVE_LISTENER_APPLICATION_NAME,
                ) as conn:
                    conn.execute(f"LISTEN {channels.ATTEMPTS_INGESTED}")
                    conn.execute(f"LISTEN {channels.DIRECTORY_CHANGED}")
                    self._ring()  # whatever came while not listening is in the queue
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._ring()
            except psycopg.Error as error:
                log.warning(
                    "the live updates' listener lost its connection; retrying",
                    extra={"error": str(error), "retry_in": self.retry_secs},
                )
                self._stop.wait(self.retry_secs)


def _try_lock(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (WORKER_LOCK,)).fetchone()
    return bool(row and row[0])
