"""Export requests and reads for the API: permissions, validation against the directory, the rate
limit, and the view of an export (its effective status and a freshly signed link).

Permission checks come before any lookup: a teacher asking about a group or an export outside
their scope gets 403 whether it exists or not; admins get 404 for unknown ids.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from reporting import metrics
from reporting.auth.scope import Scope
from reporting.context import AppContext
from reporting.errors import Forbidden, NotFound, ValidationFailed
from reporting.exports import queries, ratelimit
from reporting.exports.queries import ExportRecord, NewExport
from reporting.exports.ratelimit import Quota
from reporting.exports.schemas import (
    ExportCreate,
    ExportRead,
    ExportStatus,
    NotifyTarget,
    download_filename,
)
from reporting.observability import request_id_var
from reporting.storage import ObjectStore, link_expires_at


def require_exporter(scope: Scope, group_id: str) -> None:
    """403 unless the caller may export this group (says nothing about whether it exists)."""
    if not scope.can_read_stats:
        raise Forbidden("This token's role may not request or read exports.")
    scope.require_group(group_id)


async def request_export(
    context: AppContext, scope: Scope, group_id: str, body: ExportCreate, *, base_url: str
) -> tuple[ExportRead, Quota]:
    """Validate, take a rate-limit slot and insert a pending export, all in one transaction."""
    require_exporter(scope, group_id)
    settings = context.settings.exports
    filters = body.filters()
    notify = NotifyTarget(
        email=(body.notify.email if body.notify else None) or scope.email,
        telegram_chat_id=body.notify.telegram_chat_id if body.notify else None,
    )
    async with context.db.scoped(scope) as conn:
        if await queries.read_group_name(conn, group_id) is None:
            raise NotFound(f"There is no group {group_id!r}.")
        unknown = await queries.find_unknown_topic_ids(conn, filters.topic_ids)
        if unknown:
            index = {topic_id: i for i, topic_id in enumerate(body.topic_ids)}
            raise ValidationFailed(
                f"Unknown topic ids: {', '.join(unknown[:10])}"
                + (f" and {len(unknown) - 10} more." if len(unknown) > 10 else "."),
                [
                    {
                        "loc": ["topic_ids", index[topic_id]],
                        "msg": f"unknown topic id {topic_id!r}",
                        "type": "unknown_topic",
                    }
                    for topic_id in unknown
                ],
            )
        quota = await ratelimit.reserve_slot(conn, scope.sub, limit=settings.rate_limit_per_hour)
        record = await queries.insert_export(
            conn,
            NewExport(
                scope=scope,
                group_id=group_id,
                filters=filters,
                format=body.format,
                locale=body.locale or ("en" if scope.locale == "en" else "ru"),
                notify=notify,
                request_id=request_id_var.get(),
            ),
        )
    metrics.exports_requested_total.labels(body.format).inc()
    return _present(context, record, base_url=base_url), quota


async def read_export(
    context: AppContext, scope: Scope, export_id: str, *, base_url: str
) -> tuple[ExportRead, Quota]:
    """One export; its requester (while the group is still theirs) and admins see it, anyone
    else gets 403 (unknown ids too)."""
    if not scope.can_read_stats:
        raise Forbidden("This token's role may not request or read exports.")
    parsed = _uuid(export_id)
    async with context.db.scoped(scope) as conn:
        record = None if parsed is None else await queries.read_export(conn, scope, parsed)
        quota = await ratelimit.read_quota(
            conn, scope.sub, limit=context.settings.exports.rate_limit_per_hour
        )
    if record is None:
        if scope.is_admin:
            raise NotFound(f"There is no export {export_id!r}.")
        raise Forbidden("This export is not yours, or its group is no longer among your groups.")
    return _present(context, record, base_url=base_url), quota


@dataclass(frozen=True, slots=True)
class ExportPage:
    """Up to `limit` exports, newest first; `next_cursor` (as `cursor`) reads on after them."""

    items: list[ExportRead]
    next_cursor: str | None


async def list_exports(
    context: AppContext, scope: Scope, *, limit: int, cursor: str | None, base_url: str
) -> tuple[ExportPage, Quota]:
    """The caller's exports of their groups (an admin's: everyone's), newest first, `limit` at
    a time."""
    if not scope.can_read_stats:
        raise Forbidden("This token's role may not request or read exports.")
    before = _decode_cursor(cursor) if cursor else None
    async with context.db.scoped(scope) as conn:
        records = await queries.list_exports(conn, scope, limit=limit + 1, before=before)
        quota = await ratelimit.read_quota(
            conn, scope.sub, limit=context.settings.exports.rate_limit_per_hour
        )
    page, more = records[:limit], len(records) > limit
    return (
        ExportPage(
            items=[_present(context, record, base_url=base_url) for record in page],
            next_cursor=_encode_cursor(page[-1]) if more else None,
        ),
        quota,
    )


def effective_status(record: ExportRecord, now: datetime) -> ExportStatus:
    """A ready export past its expiry is expired, whether or not the worker has swept it yet."""
    if record.status == "ready" and record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return record.status


def present(
    record: ExportRecord,
    store: ObjectStore,
    *,
    link_ttl: timedelta,
    base_url: str | None,
    now: datetime | None = None,
) -> ExportRead:
    """The API's view: effective status, and while ready a link signed now."""
    now = now or datetime.now(UTC)
    status = effective_status(record, now)
    download_url: str | None = None
    url_expires_at: datetime | None = None
    if status == "ready" and record.storage_key and record.expires_at:
        try:
            url_expires_at = link_expires_at(record.expires_at, link_ttl, now=now)
            download_url = store.signed_url(
                record.storage_key,
                expires_at=record.expires_at,
                filename=download_filename(record.group_id, record.filters, record.format),
                base_url=base_url,
            )
        except ValueError:  # it expired between the two clocks: say so rather than fail
            status, download_url, url_expires_at = "expired", None, None
    return ExportRead(
        id=record.id,
        group_id=record.group_id,
        format=record.format,
        locale=record.locale,
        filters=record.filters,
        status=status,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        expires_at=record.expires_at,
        error=record.error,
        download_url=download_url,
        url_expires_at=url_expires_at,
    )


def _present(context: AppContext, record: ExportRecord, *, base_url: str) -> ExportRead:
    link_ttl = timedelta(hours=context.settings.exports.signed_url_ttl_hours)
    return present(record, context.store, link_ttl=link_ttl, base_url=base_url)


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def _encode_cursor(record: ExportRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, export_id = raw.split("|")
        return datetime.fromisoformat(created_at), UUID(export_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "The cursor is not valid.",
            [{"loc": ["query", "cursor"], "msg": "not a cursor from this API", "type": "cursor"}],
        ) from None
