"""The object store behind exports: S3 (s3.py) or a local directory served by the API (local.py).

Both backends take the same keys (`export_key`), upload finished files from disk and hand out
links that expire. Every method is synchronous: the export worker is; the API's `/files` route is
the only async consumer and reads the local directory itself.
"""

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class StorageError(Exception):
    """The store could not be reached or refused the operation; str() says which and why."""


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        """Upload a finished file under `key` (streamed from disk, never read whole)."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def check(self) -> None:
        """Raise StorageError, saying why, unless the store takes files now."""
        ...

    def signed_url(
        self, key: str, *, expires_at: datetime, filename: str, base_url: str | None = None
    ) -> str:
        """A link that downloads `key` as `filename` until `link_expires_at(expires_at, ttl)`:
        the store caps `expires_at` at its own signed-URL TTL. S3: a pre-signed GET; local: an
        HMAC link under REPORTING_PUBLIC_URL, else `base_url` (the request's), else relative.
        Raises ValueError when `expires_at` is not in the future."""
        ...


# A group id becomes one path segment of the key, so it must be one.
_UNSAFE_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


def export_key(prefix: str, group_id: str, export_id: str, ext: str) -> str:
    """`{prefix}exports/{group_id}/{export_id}.{ext}` (CONTRACT §6); ValueError for an id that
    cannot be a single path segment (a `/`, `..`, control characters)."""
    for name, value in (("group_id", group_id), ("export_id", export_id), ("ext", ext)):
        if not value or value in (".", "..") or _UNSAFE_SEGMENT.search(value):
            raise ValueError(f"{name} {value!r} cannot be part of a storage key")
    return f"{prefix}exports/{group_id}/{export_id}.{ext}"


def content_type_for(filename: str) -> str:
    """The Content-Type of an export file by its extension (octet-stream when unknown)."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266 / 5987), so
    a Cyrillic file name survives every browser."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\;' else "_" for ch in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def link_expires_at(
    expires_at: datetime, ttl: timedelta, *, now: datetime | None = None
) -> datetime:
    """When a link signed now stops working: the export's own expiry or now + TTL, whichever
    comes first (whole seconds, as links carry them)."""
    now = now or datetime.now(UTC)
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    capped = datetime.fromtimestamp(math.floor(min(expires_at, now + ttl).timestamp()), UTC)
    if capped <= now:
        raise ValueError("the link would already be expired")
    return capped
