"""The export rate limit: at most N accepted requests per `sub` in any rolling hour, exact.

Exactness under concurrency comes from the database, not the process: the inserting transaction
takes a transaction-scoped advisory lock on the sub, then counts the sub's exports of the last
hour. Concurrent requests of one user queue on the lock and each counts what the previous ones
committed; refused requests roll back and so are never counted. Several API processes share it.

Headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Limit`, `RateLimit-Remaining`, and
`RateLimit-Reset` = seconds until the oldest counted request leaves the window (when the next
slot frees up; 0 when nothing is counted). A 429 adds `Retry-After` with the same number.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from reporting import metrics
from reporting.errors import TooManyRequests

WINDOW = timedelta(hours=1)
# First key of the two-key advisory lock: keeps this lock apart from any other use of hashtext.
_LOCK_CLASS = 0x45585054  # "EXPT"


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    used: int
    reset_after: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


async def read_quota(conn: psycopg.AsyncConnection, sub: str, *, limit: int) -> Quota:
    """What `sub` has used of its hourly quota right now: all of its exports count, also those
    of groups its token no longer has, which the caller's scope does not see (migration 0006)."""
    cur = await conn.execute("SELECT * FROM reporting_export_quota(%s, %s)", (sub, WINDOW))
    row = await cur.fetchone()
    assert row is not None
    used, oldest, now = int(row[0]), row[1], row[2]
    reset_after = 0 if oldest is None else _seconds_until(oldest + WINDOW, now)
    return Quota(limit=limit, used=used, reset_after=reset_after)


async def reserve_slot(conn: psycopg.AsyncConnection, sub: str, *, limit: int) -> Quota:
    """Inside the inserting transaction: the quota counting the request about to be inserted.

    Raises TooManyRequests (429 with Retry-After) when the sub has no slot left; the caller's
    transaction then rolls back and the lock goes with it.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, sub))
    quota = await read_quota(conn, sub, limit=limit)
    if quota.used >= limit:
        metrics.exports_rate_limited_total.inc()
        retry_after = quota.reset_after or int(WINDOW.total_seconds())
        refused = Quota(limit=limit, used=quota.used, reset_after=retry_after)
        raise TooManyRequests(
            f"At most {limit} export requests per hour; the next one is possible in"
            f" {retry_after} s.",
            headers={"Retry-After": str(retry_after), **refused.headers()},
        )
    return Quota(
        limit=limit,
        used=quota.used + 1,
        reset_after=quota.reset_after or int(WINDOW.total_seconds()),
    )
