"""The object store behind exports: S3 (s3.py) or a local directory served by the API (local.py)."""

from datetime import datetime
from pathlib import Path
from typing import Protocol


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

    def signed_url(
        self, key: str, *, expires_at: datetime, filename: str, base_url: str | None = None
    ) -> str:
        """A link that downloads `key` until `expires_at` (S3: pre-signed GET; local: HMAC link
        under `base_url`)."""
        ...
