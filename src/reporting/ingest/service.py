"""Ingestion: the directory upsert and attempt batches, each one transaction, all or nothing.

Writes run under the system scope (owner rights): the API's role `reporting_api` has no write
grants, so the route checks `Scope.require_ingest()` first and the service then writes as the
owner. Every write is set-wise (unnest arrays, COPY into staging), never row by row.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reporting import metrics
from reporting.auth.scope import SYSTEM
from reporting.db import channels
from reporting.db.engine import Database
from reporting.ingest import copy
from reporting.ingest.schemas import (
    MAX_LISTED_ERRORS,
    AttemptCreate,
    DirectoryCounts,
    DirectoryUpsert,
    EntriesRejected,
    FieldError,
    bad_entries_detail,
    bad_indexes,
)
from reporting.stats.cache import change_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptsIngested:
    """What a batch did; `group_ids` are the groups that received new attempts (for live updates)."""

    inserted: int
    duplicates: int
    group_ids: frozenset[str]


# --- directory -------------------------------------------------------------------------------

# Only new or changed rows reach ON CONFLICT (an anti-join is far cheaper than 100k speculative
# insertions that end in "no change"); ON CONFLICT still settles a row inserted concurrently.
# Rows go in id order so that concurrent upserts wait on each other in the same order.
_UPSERT_LEVELS = """
INSERT INTO levels (id, name, position)
SELECT l.id, l.name, l.position
FROM unnest(%s::text[], %s::text[], %s::int[]) AS l (id, name, position)
LEFT JOIN levels cur ON cur.id = l.id
WHERE (cur.name, cur.position) IS DISTINCT FROM (l.name, l.position)
ORDER BY l.id COLLATE "C"
ON CONFLICT (id) DO UPDATE
SET name = excluded.name, position = excluded.position, updated_at = now()
WHERE (levels.name, levels.position) IS DISTINCT FROM (excluded.name, excluded.position)
"""

_UPSERT_TOPICS = """
INSERT INTO topics (id, name, level_key)
SELECT t.id, t.name, l.key
FROM unnest(%s::text[], %s::text[], %s::text[]) AS t (id, name, level_id)
JOIN levels l ON l.id = t.level_id
LEFT JOIN topics cur ON cur.id = t.id
WHERE (cur.name, cur.level_key) IS DISTINCT FROM (t.name, l.key)
ORDER BY t.id COLLATE "C"
ON CONFLICT (id) DO UPDATE
SET name = excluded.name, level_key = excluded.level_key, updated_at = now()
WHERE (topics.name, topics.level_key) IS DISTINCT FROM (excluded.name, excluded.level_key)
"""

_UPSERT_GROUPS = """
INSERT INTO groups (id, name)
SELECT g.id, g.name
FROM unnest(%s::text[], %s::text[]) AS g (id, name)
LEFT JOIN groups cur ON cur.id = g.id
WHERE cur.name IS DISTINCT FROM g.name
ORDER BY g.id COLLATE "C"
ON CONFLICT (id) DO UPDATE
SET name = excluded.name, updated_at = now()
WHERE groups.name IS DISTINCT FROM excluded.name
RETURNING id
"""

_UPSERT_USERS = """
INSERT INTO users (id, display_name)
SELECT u.id, u.display_name
FROM unnest(%s::text[], %s::text[]) AS u (id, display_name)
LEFT JOIN users cur ON cur.id = u.id
WHERE cur.display_name IS DISTINCT FROM u.display_name
ORDER BY u.id COLLATE "C"
ON CONFLICT (id) DO UPDATE
SET display_name = excluded.display_name, updated_at = now()
WHERE users.display_name IS DISTINCT FROM excluded.display_name
RETURNING key
"""

# The groups a set of users belongs to now (before their memberships are replaced).
_GROUPS_OF_USERS = """
SELECT g.id FROM user_groups ug JOIN groups g ON g.key = ug.group_key
WHERE ug.user_key = ANY (%s::integer[])
"""

# The given users' memberships become exactly the given pairs: drop the others, add the missing.
_REPLACE_MEMBERSHIPS = """
WITH wanted AS (
    SELECT u.key AS user_key, g.key AS group_key
    FROM unnest(%(pair_users)s::text[], %(pair_groups)s::text[]) AS m (user_id, group_id)
    JOIN users u ON u.id = m.user_id
    JOIN groups g ON g.id = m.group_id
), dropped AS (
    DELETE FROM user_groups ug
    USING users u
    WHERE u.key = ug.user_key AND u.id = ANY (%(users)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM wanted w WHERE w.user_key = ug.user_key AND w.group_key = ug.group_key)
    RETURNING ug.group_key
), added AS (
    INSERT INTO user_groups (user_key, group_key)
    SELECT w.user_key, w.group_key FROM wanted w
    WHERE NOT EXISTS (
        SELECT 1 FROM user_groups ug WHERE ug.user_key = w.user_key AND ug.group_key = w.group_key)
    ORDER BY w.user_key, w.group_key
    ON CONFLICT DO NOTHING
    RETURNING group_key
)
SELECT g.id
FROM (SELECT group_key FROM dropped UNION SELECT group_key FROM added) changed
JOIN groups g ON g.key = changed.group_key
"""


async def ingest_directory(db: Database, directory: DirectoryUpsert) -> DirectoryCounts:
    """Upsert the directory in one transaction; 422 (nothing written) on duplicates or bad refs."""
    async with db.scoped(SYSTEM) as conn:
        counts = await upsert_directory(conn, directory)
    log.info("directory upserted", extra=counts.model_dump())
    return counts


async def upsert_directory(
    conn: psycopg.AsyncConnection, directory: DirectoryUpsert
) -> DirectoryCounts:
    """Inside the caller's transaction: validate, then upsert levels, topics, groups, users and
    replace the given users' memberships."""
    errors = _repeated_ids(directory) or await _unknown_directory_references(conn, directory)
    if errors:
        names = ", ".join(e.where for e in errors[:20])
        more = ", …" if len(errors) > 20 else ""
        raise EntriesRejected(
            f"{len(errors)} directory entries are not valid ({names}{more}); nothing was written.",
            errors,
        )

    levels, topics, groups, users = (
        directory.levels,
        directory.topics,
        directory.groups,
        directory.users,
    )
    # Memberships are replaced for the users that list them; left out, they stay as they are.
    members = [u for u in users if u.group_ids is not None]
    pairs = [(u.id, g) for u in members for g in dict.fromkeys(u.group_ids or ())]
    # Each upsert skips unchanged rows: what it reports is what changed.
    cur = await conn.execute(
        _UPSERT_LEVELS,
        ([x.id for x in levels], [x.name for x in levels], [x.position for x in levels]),
    )
    catalog = cur.rowcount
    cur = await conn.execute(
        _UPSERT_TOPICS,
        ([x.id for x in topics], [x.name for x in topics], [x.level_id for x in topics]),
    )
    catalog += cur.rowcount
    cur = await conn.execute(_UPSERT_GROUPS, ([x.id for x in groups], [x.name for x in groups]))
    changed = {str(row[0]) for row in await cur.fetchall()}
    cur = await conn.execute(
        _UPSERT_USERS, ([x.id for x in users], [x.display_name for x in users])
    )
    renamed = [int(row[0]) for row in await cur.fetchall()]
    if renamed:
        cur = await conn.execute(_GROUPS_OF_USERS, (renamed,))
        changed.update(str(row[0]) for row in await cur.fetchall())
    cur = await conn.execute(
        _REPLACE_MEMBERSHIPS,
        {
            "pair_users": [user_id for user_id, _ in pairs],
            "pair_groups": [group_id for _, group_id in pairs],
            "users": [x.id for x in members],
        },
    )
    changed.update(str(row[0]) for row in await cur.fetchall())
    if catalog or changed:
        # Names and memberships are in cached answers (a group's page names its learners; a
        # teacher's view of a board keeps only their groups' learners): the API processes drop
        # what depends on these groups at our commit (school-wide answers on any change), and
        # their open dashboards are told to reload, without waiting for the next tick. Level and
        # topic names are on every group's page: everything.
        payload = change_payload(None if catalog else sorted(changed), tick_id=None)
        await conn.execute("SELECT pg_notify(%s, %s)", (channels.STATS_CHANGED, payload))
    return DirectoryCounts(
        groups=len(groups),
        users=len(users),
        levels=len(levels),
        topics=len(topics),
        memberships=len(pairs),
    )


def _repeated_ids(directory: DirectoryUpsert) -> list[FieldError]:
    """An id given twice in one list is ambiguous (which name wins?): name every repeat."""
    ids_by_kind = {
        "groups": [x.id for x in directory.groups],
        "users": [x.id for x in directory.users],
        "levels": [x.id for x in directory.levels],
        "topics": [x.id for x in directory.topics],
    }
    errors: list[FieldError] = []
    for kind, ids in ids_by_kind.items():
        first: dict[str, int] = {}
        for index, item_id in enumerate(ids):
            if item_id in first:
                msg = f"id {item_id!r} repeats {kind}[{first[item_id]}]"
                errors.append(FieldError((kind, index, "id"), msg, "duplicate_id"))
            else:
                first[item_id] = index
    return errors


async def _unknown_directory_references(
    conn: psycopg.AsyncConnection, directory: DirectoryUpsert
) -> list[FieldError]:
    """Topics' levels and users' groups that are neither in the body nor in the database."""
    body_levels = {x.id for x in directory.levels}
    body_groups = {x.id for x in directory.groups}
    wanted_levels = {x.level_id for x in directory.topics} - body_levels
    wanted_groups = {g for u in directory.users for g in u.group_ids or ()} - body_groups
    known_levels = await _existing_ids(conn, "levels", wanted_levels)
    known_groups = await _existing_ids(conn, "groups", wanted_groups)
    unknown_levels, unknown_groups = wanted_levels - known_levels, wanted_groups - known_groups

    errors = [
        FieldError(
            ("topics", i, "level_id"), f"unknown level id {t.level_id!r}", "unknown_reference"
        )
        for i, t in enumerate(directory.topics)
        if t.level_id in unknown_levels
    ]
    errors += [
        FieldError(("users", i, "group_ids", j), f"unknown group id {g!r}", "unknown_reference")
        for i, u in enumerate(directory.users)
        for j, g in enumerate(u.group_ids or ())
        if g in unknown_groups
    ]
    return errors


async def _existing_ids(conn: psycopg.AsyncConnection, table: str, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    query = sql.SQL("SELECT id FROM {} WHERE id = ANY (%s::text[])").format(sql.Identifier(table))
    rows = await (await conn.execute(query, (list(ids),))).fetchall()
    return {row[0] for row in rows}


# --- attempts --------------------------------------------------------------------------------


async def ingest_attempts(db: Database, attempts: Sequence[AttemptCreate]) -> AttemptsIngested:
    """Write a batch in one transaction, then count it; 422 (nothing written) on unknown ids."""
    async with db.scoped(SYSTEM) as conn:
        result = await write_attempts(conn, attempts)
    # Counted only once committed: a rolled-back batch ingested nothing.
    metrics.attempts_ingested_total.labels(outcome="inserted").inc(result.inserted)
    metrics.attempts_ingested_total.labels(outcome="duplicate").inc(result.duplicates)
    log.info(
        "attempts ingested",
        extra={"inserted": result.inserted, "duplicates": result.duplicates},
    )
    return result


def _reference_errors(unknown: list[copy.UnknownReference]) -> list[FieldError]:
    return [
        FieldError(("attempts", u.position, field), msg, "unknown_reference")
        for u in unknown
        for field, msg in u.problems()
    ]


async def name_unknown_references(db: Database, rejected: EntriesRejected) -> EntriesRejected:
    """A batch rejected for malformed attempts, with the ids of its well-formed ones checked too:
    one 422 then names every bad index, rather than one kind of fault per attempt to send."""
    if not rejected.well_formed:
        return rejected
    async with db.scoped(SYSTEM) as conn:
        await copy.stage(conn, rejected.well_formed)
        total, unknown = await copy.unknown_references(conn, limit=MAX_LISTED_ERRORS)
    if not total:
        return rejected
    errors = rejected.field_errors + _reference_errors(unknown)
    errors.sort(key=lambda e: bad_indexes([e]) or [-1])  # by position; stable within one
    malformed = bad_indexes(rejected.field_errors)
    indexes = sorted({*malformed, *(u.position for u in unknown)})
    detail = bad_entries_detail(
        len(malformed) + total,
        indexes,
        one="attempt is not valid or references unknown ids",
        many="attempts are not valid or reference unknown ids",
    )
    return EntriesRejected(detail, errors)


async def write_attempts(
    conn: psycopg.AsyncConnection, attempts: Sequence[AttemptCreate]
) -> AttemptsIngested:
    """Inside the caller's transaction: stage, check references, insert the new ones, NOTIFY."""
    await copy.stage(conn, enumerate(attempts))
    total, unknown = await copy.unknown_references(conn, limit=MAX_LISTED_ERRORS)
    if total:
        errors = _reference_errors(unknown)
        positions = [u.position for u in unknown]
        raise EntriesRejected(
            bad_entries_detail(
                total,
                positions,
                one="attempt references unknown ids",
                many="attempts reference unknown ids",
            ),
            errors,
        )
    inserted = await copy.insert_staged(conn)
    await copy.notify_ingested(conn, inserted.group_ids)
    return AttemptsIngested(
        inserted=inserted.count,
        duplicates=len(attempts) - inserted.count,
        group_ids=inserted.group_ids,
    )
