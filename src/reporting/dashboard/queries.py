"""The dashboard's reads. Each runs inside `Database.scoped(scope)`, so row-level security
filters them a second time: a teacher's transaction cannot see another group's rows at all."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from reporting.auth.scope import Scope


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class LevelRow:
    id: str
    name: str
    position: int


@dataclass(frozen=True, slots=True)
class TopicRow:
    id: str
    name: str
    level_id: str


@dataclass(frozen=True, slots=True)
class Totals:
    attempts: int
    correct: int
    score: float
    hints_used: int
    avg_time_seconds: float | None


@dataclass(frozen=True, slots=True)
class MemberRow:
    user_id: str
    display_name: str
    totals: Totals | None
    """None when the worker has no progress summary for the student yet (never attempted)."""
    last_activity_at: datetime | None
    computed_at: datetime | None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_groups(
    conn: psycopg.AsyncConnection, scope: Scope, *, query: str, limit: int
) -> list[GroupRow]:
    """Readable groups ordered by name then id, at most `limit` (+1 so the caller sees more)."""
    # A teacher's list is their token's groups; RLS would filter the rest anyway.
    only = None if scope.is_admin else sorted(scope.group_ids)
    cursor = await conn.execute(
        """
        SELECT id, name FROM groups
        WHERE (%(only)s::text[] IS NULL OR id = ANY (%(only)s::text[]))
          AND (%(pattern)s::text IS NULL OR id ILIKE %(pattern)s OR name ILIKE %(pattern)s)
        ORDER BY name, id
        LIMIT %(limit)s
        """,
        {
            "only": only,
            "pattern": _like_pattern(query) if query else None,
            "limit": limit + 1,
        },
    )
    return [GroupRow(id=row[0], name=row[1]) for row in await cursor.fetchall()]


async def group_exists(conn: psycopg.AsyncConnection, group_id: str) -> bool:
    cursor = await conn.execute("SELECT 1 FROM groups WHERE id = %s", (group_id,))
    return await cursor.fetchone() is not None


async def list_levels_and_topics(
    conn: psycopg.AsyncConnection,
) -> tuple[list[LevelRow], list[TopicRow]]:
    """Levels by position, topics by their level's position then name."""
    levels = await (
        await conn.execute("SELECT id, name, position FROM levels ORDER BY position, id")
    ).fetchall()
    topics = await (
        await conn.execute(
            """
            SELECT t.id, t.name, l.id
            FROM topics t JOIN levels l ON l.key = t.level_key
            ORDER BY l.position, l.id, t.name, t.id
            """
        )
    ).fetchall()
    return (
        [LevelRow(id=r[0], name=r[1], position=r[2]) for r in levels],
        [TopicRow(id=r[0], name=r[1], level_id=r[2]) for r in topics],
    )


def _totals(raw: dict[str, Any] | None) -> Totals | None:
    if not raw:
        return None
    avg_time = raw.get("avg_time_seconds")
    return Totals(
        attempts=int(raw.get("attempts") or 0),
        correct=int(raw.get("correct") or 0),
        score=float(raw.get("score") or 0.0),
        hints_used=int(raw.get("hints_used") or 0),
        avg_time_seconds=None if avg_time is None else float(avg_time),
    )


async def group_members(conn: psycopg.AsyncConnection, group_id: str) -> list[MemberRow]:
    """Every member of the group with their progress summary (if the worker wrote one).

    The caller checks the scope first; row-level security still hides a foreign group's rows.
    """
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        """
        SELECT u.id AS user_id, u.display_name, p.totals, p.last_activity_at, p.computed_at
        FROM groups g
        JOIN user_groups ug ON ug.group_key = g.key
        JOIN users u ON u.key = ug.user_key
        LEFT JOIN progress_summary p ON p.user_id = u.id
        WHERE g.id = %s
        ORDER BY u.display_name, u.id
        """,
        (group_id,),
    )
    return [
        MemberRow(
            user_id=row["user_id"],
            display_name=row["display_name"],
            totals=_totals(row["totals"]),
            last_activity_at=row["last_activity_at"],
            computed_at=row["computed_at"],
        )
        for row in await cursor.fetchall()
    ]
