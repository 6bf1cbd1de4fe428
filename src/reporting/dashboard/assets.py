"""The dashboard's static files, read once, gzipped once, versioned by their content.

Every file is reachable twice: `/dashboard/static/{version}/{name}` is cached for a year
(`immutable`; the version changes whenever any file changes, and relative module imports keep
the version), `/dashboard/static/{name}` is revalidated on every use (`no-cache` + ETag).
"""

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}

# Below this size gzip saves less than its own framing is worth.
_MIN_GZIP_BYTES = 512


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Bundle:
    version: str
    files: dict[str, Asset]


def _asset(path: Path) -> Asset:
    body = path.read_bytes()
    compressed = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(
        body=body,
        gzipped=compressed if len(body) >= _MIN_GZIP_BYTES else None,
        media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        etag='"' + hashlib.sha256(body).hexdigest()[:20] + '"',
    )


@cache
def bundle() -> Bundle:
    """All files under static/ (names relative to it, with forward slashes)."""
    files = {
        path.relative_to(STATIC_DIR).as_posix(): _asset(path)
        for path in sorted(STATIC_DIR.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }
    digest = hashlib.sha256()
    for name, asset in files.items():
        digest.update(name.encode() + b"\0" + asset.etag.encode())
    return Bundle(version=digest.hexdigest()[:12], files=files)
