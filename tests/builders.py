"""Small typed builders that write directory rows and attempts straight into the database."""

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

_event_ids = itertools.count(1)


def make_group(conn: psycopg.Connection, group_id: str, name: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO groups (id, name) VALUES (%s, %s)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING key",
        (group_id, name or f"Группа {group_id}"),
    ).fetchone()
    assert row is not None
    return int(row[0])


def make_level(
    conn: psycopg.Connection, level_id: str, position: int = 0, name: str | None = None
) -> int:
    row = conn.execute(
        "INSERT INTO levels (id, name, position) VALUES (%s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING key",
        (level_id, name or f"Уровень {level_id}", position),
    ).fetchone()
    assert row is not None
    return int(row[0])


def make_topic(
    conn: psycopg.Connection, topic_id: str, level_id: str, name: str | None = None
) -> int:
    row = conn.execute(
        "INSERT INTO topics (id, name, level_key) SELECT %s, %s, key FROM levels WHERE id = %s"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING key",
        (topic_id, name or f"Тема {topic_id}", level_id),
    ).fetchone()
    assert row is not None, f"unknown level {level_id}"
    return int(row[0])


def make_user(
    conn: psycopg.Connection, user_id: str, group_ids: list[str], display_name: str | None = None
) -> int:
    row = conn.execute(
        "INSERT INTO users (id, display_name) VALUES (%s, %s)"
        " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name RETURNING key",
        (user_id, display_name or f"Ученик {user_id}"),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO user_groups (user_key, group_key)"
        " SELECT %s, key FROM groups WHERE id = ANY(%s) ON CONFLICT DO NOTHING",
        (row[0], group_ids),
    )
    return int(row[0])


@dataclass(frozen=True)
class Attempt:
    user_id: str
    group_id: str
    topic_id: str
    is_correct: bool = True
    score: float = 1.0
    hints_used: int = 0
    time_spent_ms: int = 1000
    attempted_at: datetime = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
    task_id: str = "task-1"
    event_id: str | None = None


def make_attempts(conn: psycopg.Connection, attempts: list[Attempt]) -> list[str]:
    """Insert attempts (resolving ids to keys); returns their event ids."""
    event_ids = [a.event_id or f"ev-{next(_event_ids)}" for a in attempts]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct,"
            " score, hints_used, time_spent_ms, attempted_at)"
            " SELECT %s, u.key, g.key, t.key, %s, %s, %s, %s, %s, %s"
            " FROM users u, groups g, topics t WHERE u.id = %s AND g.id = %s AND t.id = %s",
            [
                (
                    event_id,
                    a.task_id,
                    a.is_correct,
                    a.score,
                    a.hints_used,
                    a.time_spent_ms,
                    a.attempted_at,
                    a.user_id,
                    a.group_id,
                    a.topic_id,
                )
                for event_id, a in zip(event_ids, attempts, strict=True)
            ],
        )
    return event_ids
