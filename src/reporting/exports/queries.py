"""SQL over `report_exports`: the API's side (async, under the caller's scope) and the export
worker's side (sync, owner rights: claim, lease, finish, expire).

The worker fences every write with the claim's attempt number: a worker whose lease ran out and
was taken over finds `attempts` moved on, so its late `mark_ready` changes nothing.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import psycopg

from reporting.auth.scope import Role, Scope
from reporting.db import channels
from reporting.exports.schemas import ExportFilters, ExportStatus, Format, NotifyTarget
from reporting.locales import Locale


@dataclass(frozen=True, slots=True)
class ExportRecord:
    id: UUID
    requested_by: str
    group_id: str
    filters: ExportFilters
    format: Format
    locale: Locale
    status: ExportStatus
    storage_key: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None


_RECORD_COLUMNS = (
    "id, requested_by, group_id, filters, format, locale, status, storage_key, error,"
    " created_at, started_at, finished_at, expires_at"
)


def _record(row: tuple[Any, ...]) -> ExportRecord:
    return ExportRecord(
        id=row[0],
        requested_by=row[1],
        group_id=row[2],
        filters=ExportFilters.model_validate(row[3]),
        format=row[4],
        locale=row[5],
        status=row[6],
        storage_key=row[7],
        error=row[8],
        created_at=row[9],
        started_at=row[10],
        finished_at=row[11],
        expires_at=row[12],
    )


# --- the API (async, inside Database.scoped(scope): RLS shows a teacher only their own) -------


async def read_group_name(conn: psycopg.AsyncConnection, group_id: str) -> str | None:
    cur = await conn.execute("SELECT name FROM groups WHERE id = %s", (group_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def find_unknown_topic_ids(conn: psycopg.AsyncConnection, topic_ids: list[str]) -> list[str]:
    """The ids of `topic_ids` that name no topic, in the order given."""
    if not topic_ids:
        return []
    cur = await conn.execute("SELECT id FROM topics WHERE id = ANY(%s)", (topic_ids,))
    known = {row[0] for row in await cur.fetchall()}
    return [topic_id for topic_id in topic_ids if topic_id not in known]


@dataclass(frozen=True, slots=True)
class NewExport:
    scope: Scope
    group_id: str
    filters: ExportFilters
    format: Format
    locale: Locale
    notify: NotifyTarget
    request_id: str | None


async def insert_export(conn: psycopg.AsyncConnection, new: NewExport) -> ExportRecord:
    """Insert a pending export and wake the export workers (NOTIFY is sent at commit)."""
    requester_scope = {
        "role": new.scope.role,
        "sub": new.scope.sub,
        "group_ids": sorted(new.scope.group_ids),
    }
    cur = await conn.execute(
        "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters, format,"
        " locale, notify, request_id, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())"
        f" RETURNING {_RECORD_COLUMNS}",
        (
            new.scope.sub,
            json.dumps(requester_scope),
            new.group_id,
            new.filters.model_dump_json(by_alias=True),
            new.format,
            new.locale,
            new.notify.model_dump_json(exclude_none=True),
            new.request_id,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    record = _record(row)
    await conn.execute("SELECT pg_notify(%s, %s)", (channels.EXPORTS_PENDING, str(record.id)))
    return record


# A teacher's exports of the groups they still have; an admin's: everyone's (as the RLS policy).
_VISIBLE = "(%(admin)s OR (requested_by = %(sub)s AND group_id = ANY (%(groups)s)))"


def _visibility(scope: Scope) -> dict[str, object]:
    return {"admin": scope.is_admin, "sub": scope.sub, "groups": sorted(scope.group_ids)}


async def read_export(
    conn: psycopg.AsyncConnection, scope: Scope, export_id: UUID
) -> ExportRecord | None:
    """The export if `scope` may see it (see _VISIBLE), else None, whether it exists or not."""
    cur = await conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM report_exports WHERE id = %(id)s AND {_VISIBLE}",
        {"id": export_id, **_visibility(scope)},
    )
    row = await cur.fetchone()
    return None if row is None else _record(row)


async def list_exports(
    conn: psycopg.AsyncConnection,
    scope: Scope,
    *,
    limit: int,
    before: tuple[datetime, UUID] | None,
) -> list[ExportRecord]:
    """The exports `scope` may see (see _VISIBLE), newest first, after the cursor."""
    after_cursor = "" if before is None else " AND (created_at, id) < (%(at)s, %(id)s)"
    cur = await conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM report_exports WHERE {_VISIBLE}{after_cursor}"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {
            **_visibility(scope),
            "limit": limit,
            **({} if before is None else {"at": before[0], "id": before[1]}),
        },
    )
    return [_record(row) for row in await cur.fetchall()]


# --- the export worker (sync, owner connection) ------------------------------------------------


def export_record(conn: psycopg.Connection, export_id: str) -> ExportRecord | None:
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM report_exports WHERE id = %s", (export_id,)
    ).fetchone()
    return None if row is None else _record(row)


def group_name(conn: psycopg.Connection, group_id: str) -> str | None:
    row = conn.execute("SELECT name FROM groups WHERE id = %s", (group_id,)).fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True, slots=True)
class ClaimedExport:
    """An export this worker holds the lease on; `attempt` fences its writes."""

    id: UUID
    scope: Scope
    group_id: str
    filters: ExportFilters
    format: Format
    locale: Locale
    notify: NotifyTarget
    request_id: str | None
    attempt: int


def claim_next_export(conn: psycopg.Connection, *, lease_seconds: float) -> ClaimedExport | None:
    """Take the oldest pending export (or one whose worker's lease ran out); commits at once."""
    with conn.transaction():
        row = conn.execute(
            """
            UPDATE report_exports
            SET status = 'processing', started_at = now(), attempts = attempts + 1,
                lease_expires_at = now() + make_interval(secs => %s), error = NULL
            WHERE id = (
                SELECT id FROM report_exports
                WHERE status = 'pending' OR (status = 'processing' AND lease_expires_at < now())
                ORDER BY created_at
                FOR UPDATE SKIP LOCKED
                LIMIT 1
            )
            RETURNING id, requester_scope, group_id, filters, format, locale, notify,
                      request_id, attempts
            """,
            (lease_seconds,),
        ).fetchone()
    if row is None:
        return None
    stored_scope = row[1]
    return ClaimedExport(
        id=row[0],
        scope=Scope(
            role=cast(Role, stored_scope["role"]),
            sub=str(stored_scope["sub"]),
            group_ids=frozenset(stored_scope.get("group_ids", [])),
        ),
        group_id=row[2],
        filters=ExportFilters.model_validate(row[3]),
        format=row[4],
        locale=row[5],
        notify=NotifyTarget.model_validate(row[6]),
        request_id=row[7],
        attempt=row[8],
    )


_HOLDS_LEASE = "id = %(id)s AND attempts = %(attempt)s AND status = 'processing'"


def renew_lease(conn: psycopg.Connection, job: ClaimedExport, *, lease_seconds: float) -> bool:
    """Push the lease out; False when another worker has taken the export over."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE report_exports SET lease_expires_at = now() + make_interval(secs => %(secs)s)"
            f" WHERE {_HOLDS_LEASE}",
            {"id": job.id, "attempt": job.attempt, "secs": lease_seconds},
        )
    return cur.rowcount == 1


def mark_ready(
    conn: psycopg.Connection, job: ClaimedExport, *, storage_key: str, ttl_hours: float
) -> datetime | None:
    """Inside the caller's transaction; returns expires_at, or None when the lease was lost."""
    row = conn.execute(
        "UPDATE report_exports SET status = 'ready', storage_key = %(key)s, error = NULL,"
        " finished_at = now(), expires_at = now() + make_interval(secs => %(ttl)s),"
        " lease_expires_at = NULL"
        f" WHERE {_HOLDS_LEASE} RETURNING expires_at",
        {"id": job.id, "attempt": job.attempt, "key": storage_key, "ttl": ttl_hours * 3600},
    ).fetchone()
    return None if row is None else cast(datetime, row[0])


def retry_after_lease(
    conn: psycopg.Connection, job: ClaimedExport, *, lease_seconds: float, error: str
) -> bool:
    """Inside the caller's transaction: leave the export claimable once a fresh lease runs out
    (as a dead worker's is), `error` saying why meanwhile; False when the lease was lost."""
    cur = conn.execute(
        "UPDATE report_exports SET error = %(error)s,"
        " lease_expires_at = now() + make_interval(secs => %(secs)s)"
        f" WHERE {_HOLDS_LEASE}",
        {"id": job.id, "attempt": job.attempt, "secs": lease_seconds, "error": error[:2000]},
    )
    return cur.rowcount == 1


def mark_failed(conn: psycopg.Connection, job: ClaimedExport, *, error: str) -> bool:
    """Inside the caller's transaction; False when the lease was lost meanwhile."""
    cur = conn.execute(
        "UPDATE report_exports SET status = 'failed', error = %(error)s, finished_at = now(),"
        f" lease_expires_at = NULL WHERE {_HOLDS_LEASE}",
        {"id": job.id, "attempt": job.attempt, "error": error[:2000]},
    )
    return cur.rowcount == 1


def lock_expired_exports(conn: psycopg.Connection, *, limit: int) -> list[tuple[UUID, str]]:
    """Inside the caller's transaction: ready exports past their expiry, locked, with their keys."""
    rows = conn.execute(
        "SELECT id, storage_key FROM report_exports"
        " WHERE status = 'ready' AND expires_at <= now()"
        " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def mark_expired(conn: psycopg.Connection, export_id: UUID) -> None:
    conn.execute("UPDATE report_exports SET status = 'expired' WHERE id = %s", (export_id,))
