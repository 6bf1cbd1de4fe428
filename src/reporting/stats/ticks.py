"""The analytics ticks' record: what a tick reports (`TickResult`) and its `worker_ticks` row.

A full tick opens its row as `running`, so that a tick killed midway is found and closed as
abandoned by the next worker, and closes it inside its swap's transaction; an incremental tick
(seconds long) writes its row in its own transaction once everything is computed; a turn that
another worker's lock skips writes a `skipped` row. A failed tick's row says why.
"""

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

Mode = Literal["full", "incremental"]
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one successful tick wrote; `durations` are seconds per phase."""

    tick_id: int
    computed_at: datetime
    attempts: int
    users_with_attempts: int
    stats: dict[str, int]
    leaderboards: int
    progress_summaries: int
    durations: dict[str, float] = field(default_factory=dict)
    mode: Mode = "full"  # incremental (stats/incremental.py): the counts are what changed

    @property
    def seconds(self) -> float:
        return sum(self.durations.values())

    def details(self) -> dict[str, object]:
        """The row's `details` (also what `tick done` logs)."""
        return {
            "mode": self.mode,
            "attempts": self.attempts,
            "users_with_attempts": self.users_with_attempts,
            "materialized_stats": self.stats,
            "leaderboards": self.leaderboards,
            "progress_summary": self.progress_summaries,
            "computed_at": self.computed_at.isoformat(),
        }


@contextmanager
def timed(durations: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block took as `durations[name]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        durations[name] = round(time.perf_counter() - started, 3)


def begin_full(conn: psycopg.Connection) -> int:
    """Open a full tick's `running` row (committed at once); returns its id."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO worker_ticks (started_at, status, details)"
            " VALUES (clock_timestamp(), 'running', %s) RETURNING id",
            (json.dumps({"mode": "full", "backend_pid": conn.info.backend_pid}),),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish_full(conn: psycopg.Connection, result: TickResult) -> None:
    """Inside the swap's transaction: the full tick's row succeeds, with the swap's own time
    (from the transaction's start to now) among the durations."""
    conn.execute(
        "UPDATE worker_ticks SET status = 'success', finished_at = clock_timestamp(),"
        " details = details || %s::jsonb"
        " || jsonb_build_object('durations', %s::jsonb || jsonb_build_object("
        "     'swap', extract(epoch FROM clock_timestamp() - now())::float8))"
        " WHERE id = %s",
        (json.dumps(result.details()), json.dumps(result.durations), result.tick_id),
    )


def record_incremental(conn: psycopg.Connection, result: TickResult) -> int:
    """Inside the incremental tick's transaction: its row, finished; returns its id."""
    details = {**result.details(), "durations": result.durations}
    row = conn.execute(
        "INSERT INTO worker_ticks (started_at, finished_at, status, details)"
        " VALUES (now(), clock_timestamp(), 'success', %s) RETURNING id",
        (json.dumps(details),),
    ).fetchone()
    assert row is not None
    return int(row[0])


def record_failure(
    conn: psycopg.Connection, error: BaseException, *, mode: Mode, tick_id: int | None = None
) -> None:
    """After a failed tick (its transaction is rolled back here): the full tick's open row, or
    a new row for an incremental one, becomes `error` with the reason. Never raises: the
    connection itself may be gone, and then the next worker closes the row as abandoned."""
    message = f"{type(error).__name__}: {error}".strip()[:MAX_ERROR_CHARS]
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            if tick_id is not None:
                conn.execute(
                    "UPDATE worker_ticks SET status = 'error', finished_at = clock_timestamp(),"
                    " error = %s WHERE id = %s",
                    (message, tick_id),
                )
            else:
                conn.execute(
                    "INSERT INTO worker_ticks (started_at, finished_at, status, details, error)"
                    " VALUES (clock_timestamp(), clock_timestamp(), 'error', %s, %s)",
                    (json.dumps({"mode": mode}), message),
                )
    except psycopg.Error as failure:
        log.warning(
            "could not record the failed tick",
            extra={"tick_id": tick_id, "mode": mode, "error": str(failure)},
        )


def record_skip(conn: psycopg.Connection) -> None:
    """A turn skipped because another analytics worker holds the lock."""
    conn.execute(
        "INSERT INTO worker_ticks (started_at, finished_at, status, details)"
        " VALUES (clock_timestamp(), clock_timestamp(), 'skipped',"
        ' \'{"reason": "another analytics worker holds the lock"}\')'
    )


def close_abandoned(conn: psycopg.Connection) -> int:
    """Rows still `running` belong to a worker that stopped mid-tick: close them as errors."""
    return conn.execute(
        "UPDATE worker_ticks SET status = 'error', finished_at = clock_timestamp(),"
        " error = 'abandoned: the worker stopped before the tick finished'"
        " WHERE status = 'running'"
    ).rowcount
