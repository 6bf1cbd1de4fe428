"""The bulk path of attempts, shared by `POST /ingest/attempts` and `reporting ingest attempts`.

A batch is COPYed into a transaction-local staging table that still holds the public text ids;
references are checked there in one query, and one INSERT ... SELECT resolves the ids to the
directory's integer keys. `ON CONFLICT (event_id) DO NOTHING` makes a repeated event a duplicate
across batches, and within a batch only its first copy is inserted. Rows go in event_id order so
that two batches sharing events lock them in the same order and never deadlock. Everything runs
inside the caller's transaction: a rejected batch leaves nothing behind.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from reporting.db import channels
from reporting.ingest.schemas import AttemptCreate

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more: larger sets go out in several.
_NOTIFY_MAX_BYTES = 7_000

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS attempt_staging (
    position      bigint NOT NULL,
    event_id      text COLLATE "C" NOT NULL,
    user_id       text COLLATE "C" NOT NULL,
    group_id      text COLLATE "C" NOT NULL,
    topic_id      text COLLATE "C" NOT NULL,
    task_id       text COLLATE "C" NOT NULL,
    is_correct    boolean NOT NULL,
    score         double precision NOT NULL,
    hints_used    integer NOT NULL,
    time_spent_ms bigint NOT NULL,
    attempted_at  timestamptz NOT NULL
) ON COMMIT DROP
"""

_COPY = """
COPY attempt_staging (position, event_id, user_id, group_id, topic_id, task_id, is_correct,
                      score, hints_used, time_spent_ms, attempted_at) FROM STDIN
"""

_UNKNOWN_REFERENCES = """
SELECT s.position,
       CASE WHEN u.key IS NULL THEN s.user_id END,
       CASE WHEN g.key IS NULL THEN s.group_id END,
       CASE WHEN t.key IS NULL THEN s.topic_id END,
       count(*) OVER ()
FROM attempt_staging s
LEFT JOIN users u ON u.id = s.user_id
LEFT JOIN groups g ON g.id = s.group_id
LEFT JOIN topics t ON t.id = s.topic_id
WHERE u.key IS NULL OR g.key IS NULL OR t.key IS NULL
ORDER BY s.position
LIMIT %s
"""

_INSERT = """
WITH inserted AS (
    INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct, score,
                          hints_used, time_spent_ms, attempted_at)
    -- The first copy of an event repeated within the batch is the one kept, as across batches.
    SELECT DISTINCT ON (s.event_id)
           s.event_id, u.key, g.key, t.key, s.task_id, s.is_correct, s.score, s.hints_used,
           s.time_spent_ms, s.attempted_at
    FROM attempt_staging s
    JOIN users u ON u.id = s.user_id
    JOIN groups g ON g.id = s.group_id
    JOIN topics t ON t.id = s.topic_id
    ORDER BY s.event_id, s.position
    ON CONFLICT (event_id) DO NOTHING
    RETURNING group_key
)
SELECT (SELECT count(*) FROM inserted),
       array(SELECT g.id FROM groups g WHERE g.key IN (SELECT group_key FROM inserted))
"""


@dataclass(frozen=True, slots=True)
class UnknownReference:
    """A staged attempt whose user, group or topic id is not in the directory (None = known)."""

    position: int
    user_id: str | None
    group_id: str | None
    topic_id: str | None

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for each unknown id of the attempt."""
        found = [
            ("user_id", self.user_id, "user"),
            ("group_id", self.group_id, "group"),
            ("topic_id", self.topic_id, "topic"),
        ]
        return [(f, f"unknown {kind} id {value!r}") for f, value, kind in found if value]


@dataclass(frozen=True, slots=True)
class Inserted:
    count: int
    group_ids: frozenset[str]


async def stage(
    conn: psycopg.AsyncConnection, attempts: Iterable[tuple[int, AttemptCreate]]
) -> None:
    """Replace the staging table's rows with `(position, attempt)` pairs."""
    await conn.execute(_STAGING)
    await conn.execute("TRUNCATE attempt_staging")
    async with conn.cursor().copy(_COPY) as copy:
        for position, a in attempts:
            await copy.write_row(
                (
                    position,
                    a.event_id,
                    a.user_id,
                    a.group_id,
                    a.topic_id,
                    a.task_id,
                    a.is_correct,
                    a.score,
                    a.hints_used,
                    a.time_spent_ms,
                    a.attempted_at,
                )
            )


async def unknown_references(
    conn: psycopg.AsyncConnection, *, limit: int
) -> tuple[int, list[UnknownReference]]:
    """How many staged attempts reference unknown ids, and the first `limit` of them."""
    rows = await (await conn.execute(_UNKNOWN_REFERENCES, (limit,))).fetchall()
    total = int(rows[0][4]) if rows else 0
    return total, [UnknownReference(*row[:4]) for row in rows]


async def insert_staged(conn: psycopg.AsyncConnection) -> Inserted:
    """Insert the staged attempts that are new; returns how many and their groups."""
    row = await (await conn.execute(_INSERT)).fetchone()
    assert row is not None
    return Inserted(count=int(row[0]), group_ids=frozenset(row[1]))


async def notify_ingested(conn: psycopg.AsyncConnection, group_ids: Iterable[str]) -> None:
    """NOTIFY attempts_ingested with the groups that changed; delivered when the caller commits."""
    for payload in notify_payloads(group_ids):
        await conn.execute("SELECT pg_notify(%s, %s)", (channels.ATTEMPTS_INGESTED, payload))


def notify_payloads(group_ids: Iterable[str]) -> list[str]:
    """`{"group_ids": [...]}` payloads, each under PostgreSQL's limit; none for no groups."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for group_id in sorted(set(group_ids)):
        cost = len(json.dumps(group_id).encode()) + 2
        if chunk and size + cost > _NOTIFY_MAX_BYTES:
            payloads.append(json.dumps({"group_ids": chunk}))
            chunk, size = [], 0
        chunk.append(group_id)
        size += cost
    if chunk:
        payloads.append(json.dumps({"group_ids": chunk}))
    return payloads
