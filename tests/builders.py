"""Small typed builders that write directory rows and attempts straight into the database."""

import itertools
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

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


# --- derived rows, as reporting-worker writes them (CONTRACT §2) --------------------------------


def stat_metrics(**overrides: float) -> dict[str, float]:
    """A complete `metrics` object; override any key."""
    metrics: dict[str, float] = {
        "total_attempts": 10,
        "total_users": 2,
        "avg_accuracy": 0.5,
        "avg_score": 5.0,
        "hint_usage_rate": 0.2,
        "avg_hints": 0.3,
        "avg_time_seconds": 12.5,
    }
    metrics.update(overrides)
    return metrics


def make_stat(
    conn: psycopg.Connection,
    stat_type: str,
    entity_id: str,
    metrics: dict[str, float] | None = None,
    *,
    group_id: str | None = None,
    computed_at: datetime | None = None,
) -> None:
    """Upsert a materialized_stats row; group_id defaults to the group part of group* ids."""
    if group_id is None and stat_type.startswith("group"):
        group_id = entity_id.partition(":")[0]
    conn.execute(
        "INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (type, entity_id) DO UPDATE"
        " SET group_id = excluded.group_id, metrics = excluded.metrics,"
        " computed_at = excluded.computed_at",
        (
            stat_type,
            entity_id,
            group_id,
            Jsonb(metrics or stat_metrics()),
            computed_at or datetime.now(UTC),
        ),
    )


@dataclass(frozen=True)
class Ranking:
    rank: int
    user_id: str
    display_name: str
    score: float = 1.0
    accuracy: float = 1.0
    attempts: int = 1


def make_leaderboard(
    conn: psycopg.Connection,
    scope: str,
    scope_id: str,
    rankings: list[Ranking],
    *,
    computed_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> None:
    """Upsert a leaderboard; expires_at defaults to computed_at + 24 h."""
    computed_at = computed_at or datetime.now(UTC)
    conn.execute(
        "INSERT INTO leaderboards (scope, scope_id, rankings, computed_at, expires_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (scope, scope_id) DO UPDATE"
        " SET rankings = excluded.rankings, computed_at = excluded.computed_at,"
        " expires_at = excluded.expires_at",
        (
            scope,
            scope_id,
            Jsonb([asdict(r) for r in rankings]),
            computed_at,
            expires_at or computed_at + timedelta(hours=24),
        ),
    )


def progress(attempts: int = 4, correct: int = 3, **extra: object) -> dict[str, object]:
    """One totals/levels[]/topics[] entry of a progress_summary; `extra` adds level_id etc."""
    return {
        "attempts": attempts,
        "correct": correct,
        "accuracy": correct / attempts if attempts else 0.0,
        "score": float(correct),
        "hints_used": 1,
        "avg_time_seconds": 10.0,
        **extra,
    }


def make_progress(
    conn: psycopg.Connection,
    user_id: str,
    *,
    totals: dict[str, object] | None = None,
    levels: list[dict[str, object]] | None = None,
    topics: list[dict[str, object]] | None = None,
    last_activity_at: datetime | None = None,
    computed_at: datetime | None = None,
) -> None:
    """Upsert a progress_summary row."""
    now = datetime.now(UTC)
    conn.execute(
        "INSERT INTO progress_summary (user_id, totals, levels, topics, last_activity_at,"
        " computed_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id) DO UPDATE"
        " SET totals = excluded.totals, levels = excluded.levels, topics = excluded.topics,"
        " last_activity_at = excluded.last_activity_at, computed_at = excluded.computed_at",
        (
            user_id,
            Jsonb(totals or progress()),
            Jsonb(levels or []),
            Jsonb(topics or []),
            last_activity_at or now,
            computed_at or now,
        ),
    )
