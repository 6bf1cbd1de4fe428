"""Object storage for exports: `build_store(settings)` gives S3 or the local directory."""

from reporting.storage.base import (
    ObjectStore,
    StorageError,
    content_disposition,
    content_type_for,
    export_key,
    link_expires_at,
)
from reporting.storage.factory import build_store

__all__ = [
    "ObjectStore",
    "StorageError",
    "build_store",
    "content_disposition",
    "content_type_for",
    "export_key",
    "link_expires_at",
]
