"""The SQL of GET /stats/*: reads of the derived tables, each under the caller's scope.

Every function runs on a connection from `Database.scoped(scope)` and filters by the scope itself
as well (`%(all_groups)s OR g.id = ANY(%(group_ids)s)`), so the row-level security policies are a
second line, not the only one. Orders: levels by position then id; topics by their level's
position, then name (by code point), then id; groups by id; rankings as the worker stored them
(by rank).
"""

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import TypeAdapter

from reporting.auth.scope import Scope
from reporting.stats.schemas import (
    GroupMetricsRead,
    GroupStatsRead,
    LeaderboardRead,
    LeaderboardScope,
    LevelStatsRead,
    StatRead,
    TopicStatsRead,
    UserStatsRead,
)

Connection = psycopg.AsyncConnection[Any]


def _visibility(scope: Scope) -> dict[str, object]:
    return {"all_groups": scope.is_admin, "group_ids": sorted(scope.group_ids)}


async def _rows(conn: Connection, query: str, params: dict[str, object]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def _row(conn: Connection, query: str, params: dict[str, object]) -> dict[str, Any] | None:
    rows = await _rows(conn, query, params)
    return rows[0] if rows else None


async def _stat(conn: Connection, stat_type: str, entity_id: str) -> StatRead | None:
    row = await _row(
        conn,
        "SELECT type, entity_id, metrics, computed_at FROM materialized_stats"
        " WHERE type = %(type)s AND entity_id = %(entity_id)s",
        {"type": stat_type, "entity_id": entity_id},
    )
    return StatRead.model_validate(row) if row else None


# --- groups ------------------------------------------------------------------------------------

# A group's page in one statement (one round trip: a refill after every live tick of a busy
# group is what the API spends most on then; five statements took ~4 ms of its CPU, one ~3 ms).
# The lists are built as JSON text inside PostgreSQL and spliced into the page as they come: a
# page has up to 500 topics (~160 KiB), and validating and re-encoding them in Python took ~12 ms
# of the event loop per fill (measured at 10M attempts), which after a tick that changed many
# pages held up every other reader. Compact text, as the model would print it, except that each
# `metrics` is the stored jsonb's own text (its key order, a space after each colon and comma).
# They hold only ids, names (to_json escapes them) and the metrics the worker wrote
# (reporting_state.kpi: exactly the keys of `Metrics`); tests/stats check the served page
# against GroupStatsRead. Topic names are ordered by code point (COLLATE "C"), as exports order
# text: the same on every server and in Python, and ~1 ms cheaper a page than glibc's strcoll.
# A group's own board shows all of its learners, whoever asks.
_GROUP_PAGE = """
SELECT g.id AS group_id, g.name,
       s.metrics AS stat_metrics, s.computed_at AS stat_computed_at,
       b.computed_at AS board_computed_at, b.expires_at AS board_expires_at,
       b.rankings AS board_rankings,
       (SELECT '[' || coalesce(string_agg(
                   concat('{"level_id":', to_json(l.id), ',"name":', to_json(l.name),
                          ',"metrics":', ms.metrics, '}'),
                   ',' ORDER BY l.position, l.id), '') || ']'
        FROM materialized_stats ms
        JOIN levels l ON ms.entity_id = %(group_id)s || ':' || l.id
        WHERE ms.type = 'group_level' AND ms.group_id = %(group_id)s
          AND (%(all_groups)s OR ms.group_id = ANY (%(group_ids)s))) AS levels,
       (SELECT '[' || coalesce(string_agg(
                   concat('{"topic_id":', to_json(t.id), ',"name":', to_json(t.name),
                          ',"level_id":', to_json(l.id), ',"metrics":', ms.metrics, '}'),
                   ',' ORDER BY l.position, t.name COLLATE "C", t.id), '') || ']'
        FROM materialized_stats ms
        JOIN topics t ON ms.entity_id = %(group_id)s || ':' || t.id
        JOIN levels l ON l.key = t.level_key
        WHERE ms.type = 'group_topic' AND ms.group_id = %(group_id)s
          AND (%(all_groups)s OR ms.group_id = ANY (%(group_ids)s))) AS topics
FROM groups g
LEFT JOIN materialized_stats s ON s.type = 'group' AND s.entity_id = g.id
LEFT JOIN LATERAL (
    SELECT computed_at, expires_at, rankings
    FROM reporting_visible_board('group', g.id) WHERE expires_at > now()
) b ON true
WHERE g.id = %(group_id)s AND (%(all_groups)s OR g.id = ANY (%(group_ids)s))
"""

_groups_json = TypeAdapter(list[GroupMetricsRead])


async def _json_array(conn: Connection, query: str, params: dict[str, object]) -> str:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None  # an aggregate always returns its row
    return str(row[0])


@dataclass(frozen=True, slots=True)
class GroupPage:
    """A group's page as served: the JSON of a GroupStatsRead, and its leaderboard (whose expiry
    bounds how long the page may be cached)."""

    body: bytes
    leaderboard: LeaderboardRead | None


async def read_group_page(conn: Connection, scope: Scope, group_id: str) -> GroupPage | None:
    """The group's page, or None when the group is unknown (or invisible to `scope`)."""
    row = await _row(conn, _GROUP_PAGE, {"group_id": group_id, **_visibility(scope)})
    if row is None:
        return None
    stats = None
    if row["stat_metrics"] is not None:
        stats = StatRead(
            type="group",
            entity_id=group_id,
            metrics=row["stat_metrics"],
            computed_at=row["stat_computed_at"],
        )
    leaderboard = None
    if row["board_rankings"] is not None:
        leaderboard = LeaderboardRead(
            scope="group",
            scope_id=group_id,
            rankings=row["board_rankings"],
            computed_at=row["board_computed_at"],
            expires_at=row["board_expires_at"],
        )
    head = GroupStatsRead(
        group_id=row["group_id"],
        name=row["name"],
        stats=stats,
        leaderboard=leaderboard,
        levels=[],
        topics=[],
    ).model_dump_json(exclude={"levels", "topics"})
    # The fields in the model's order: the head's, then levels and topics.
    body = f'{head[:-1]},"levels":{row["levels"]},"topics":{row["topics"]}}}'
    return GroupPage(body.encode(), leaderboard)


# --- users -------------------------------------------------------------------------------------

# The membership test and the lookup are one predicate: an unknown user and a user outside the
# teacher's groups are indistinguishable here (no existence leak).
_USER = """
SELECT u.id AS user_id, u.display_name,
       array(SELECT g.id FROM user_groups ug JOIN groups g ON g.key = ug.group_key
             WHERE ug.user_key = u.key AND (%(all_groups)s OR g.id = ANY (%(group_ids)s))
             ORDER BY g.id) AS group_ids,
       ps.totals, coalesce(ps.levels, '[]') AS levels, coalesce(ps.topics, '[]') AS topics,
       ps.last_activity_at, ps.computed_at
FROM users u
LEFT JOIN progress_summary ps ON ps.user_id = u.id
WHERE u.id = %(user_id)s
  AND (%(all_groups)s OR EXISTS (
        SELECT 1 FROM user_groups ug JOIN groups g ON g.key = ug.group_key
        WHERE ug.user_key = u.key AND g.id = ANY (%(group_ids)s)))
"""

_USER_VISIBLE = """
SELECT 1
FROM users u JOIN user_groups ug ON ug.user_key = u.key JOIN groups g ON g.key = ug.group_key
WHERE u.id = %(user_id)s AND (%(all_groups)s OR g.id = ANY (%(group_ids)s))
LIMIT 1
"""


async def user_is_visible(conn: Connection, scope: Scope, user_id: str) -> bool:
    """Whether the user belongs to one of the scope's groups (always true for admins)."""
    if scope.is_admin:
        return True
    params = {"user_id": user_id, **_visibility(scope)}
    return await _row(conn, _USER_VISIBLE, params) is not None


async def read_user_stats(conn: Connection, scope: Scope, user_id: str) -> UserStatsRead | None:
    """The learner's progress; `group_ids` lists only the groups the scope may see."""
    row = await _row(conn, _USER, {"user_id": user_id, **_visibility(scope)})
    return UserStatsRead.model_validate(row) if row else None


# --- topics and levels -------------------------------------------------------------------------

_TOPIC = """
SELECT t.id AS topic_id, t.name, l.id AS level_id
FROM topics t JOIN levels l ON l.key = t.level_key
WHERE t.id = %(entity_id)s
"""

_LEVEL = "SELECT l.id AS level_id, l.name FROM levels l WHERE l.id = %(entity_id)s"

# One primary-key probe per visible group: the per-group rows of a topic share no indexable prefix.
_PER_GROUP = """
SELECT coalesce(json_agg(json_build_object('group_id', g.id, 'metrics', ms.metrics)
                         ORDER BY g.id), '[]')::text
FROM groups g
JOIN materialized_stats ms ON ms.type = %(type)s AND ms.entity_id = g.id || ':' || %(entity_id)s
WHERE %(all_groups)s OR g.id = ANY (%(group_ids)s)
"""


@dataclass(frozen=True, slots=True)
class _Catalog:
    entity_query: str
    school_type: str
    group_type: str


_TOPICS = _Catalog(_TOPIC, "topic", "group_topic")
_LEVELS = _Catalog(_LEVEL, "level", "group_level")


async def _read_catalog_entry(
    conn: Connection, scope: Scope, catalog: _Catalog, entity_id: str
) -> dict[str, Any] | None:
    params = {"entity_id": entity_id, "type": catalog.group_type, **_visibility(scope)}
    entity = await _row(conn, catalog.entity_query, params)
    if entity is None:
        return None
    groups = _groups_json.validate_json(await _json_array(conn, _PER_GROUP, params))
    return {**entity, "stats": await _stat(conn, catalog.school_type, entity_id), "groups": groups}


async def read_topic_stats(conn: Connection, scope: Scope, topic_id: str) -> TopicStatsRead | None:
    """School-wide stats of the topic plus one entry per group the scope may see."""
    entry = await _read_catalog_entry(conn, scope, _TOPICS, topic_id)
    return TopicStatsRead.model_validate(entry) if entry else None


async def read_level_stats(conn: Connection, scope: Scope, level_id: str) -> LevelStatsRead | None:
    """School-wide stats of the level plus one entry per group the scope may see."""
    entry = await _read_catalog_entry(conn, scope, _LEVELS, level_id)
    return LevelStatsRead.model_validate(entry) if entry else None


# --- leaderboards ------------------------------------------------------------------------------

# For a teacher, the rankings keep only learners of the teacher's groups, each with the rank it
# has on the whole board: the database filters them (migration 0008), so the table itself never
# shows a teacher another group's learners. Expired boards are never served, even before the
# worker deletes them.
_LEADERBOARD = """
SELECT scope, scope_id, computed_at, expires_at, rankings
FROM reporting_visible_board(%(scope)s, %(scope_id)s)
WHERE expires_at > now()
  AND (%(all_groups)s OR scope <> 'group' OR scope_id = ANY (%(group_ids)s))
"""


async def read_leaderboard(
    conn: Connection, scope: Scope, board: LeaderboardScope, scope_id: str
) -> LeaderboardRead | None:
    """The current board, filtered to the scope's learners; None when absent or expired."""
    params = {"scope": board, "scope_id": scope_id, **_visibility(scope)}
    row = await _row(conn, _LEADERBOARD, params)
    return LeaderboardRead.model_validate(row) if row else None
