"""The running sums behind incremental ticks: where they live and when they can be trusted.

A full tick (aggregate.py) builds them beside its results and moves them into schema
`reporting_state` in its swap; incremental ticks (incremental.py) update them. The per-user
tables come in halves (users split by `user_key mod HALVES`, as the full tick computes them).

They are UNLOGGED, written once per full tick without WAL: a crash of PostgreSQL empties them,
which `is_valid` notices (the sentinel row is gone), and the next tick is a full one. They are
also invalid when the directory changed since the full tick that built them (directory_version,
bumped by triggers, see migration 0002), when no full tick built them yet, or when
REPORTING_LEADERBOARD_SIZE changed since: incremental ticks recompute only the boards their
attempts touch, so the others would keep the old size (a full tick cuts every board anew).
"""

from dataclasses import dataclass

import psycopg

SCHEMA = "reporting_state"
HALVES = 2
SCOPE_SUMS = "scope_sums"
SENTINEL = "sentinel"


@dataclass(frozen=True, slots=True)
class HalfTables:
    """Per (user, group, topic) sums, and per (user, scope) sums, of one half of the users."""

    user_topic: str
    user_scope: str


def state_tables(half: int) -> HalfTables:
    return HalfTables(user_topic=f"user_topic_{half}", user_scope=f"user_scope_{half}")


def all_tables() -> list[str]:
    names = [SCOPE_SUMS, SENTINEL]
    for half in range(HALVES):
        tables = state_tables(half)
        names += [tables.user_topic, tables.user_scope]
    return names


def is_valid(conn: psycopg.Connection, leaderboard_size: int) -> bool:
    """Whether the sums match every attempt minus the queue, and the boards were cut at
    `leaderboard_size` (inside the caller's transaction)."""
    row = conn.execute(
        "SELECT state_version = directory_version, to_regclass(%s) IS NOT NULL"
        " FROM aggregate_state",
        (f"{SCHEMA}.{SENTINEL}",),
    ).fetchone()
    if row is None or not row[0] or not row[1]:
        return False
    # to_jsonb: a sentinel of an older worker has no leaderboard_size column (then: not valid).
    present = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.{SENTINEL} s"
        "               WHERE (to_jsonb(s) ->> 'leaderboard_size')::int = %s)",
        (leaderboard_size,),
    ).fetchone()
    return bool(present and present[0])
