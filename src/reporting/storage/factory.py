"""build_store(settings): S3 when OBJECT_STORAGE_BUCKET is set, else the local directory."""

from datetime import timedelta

from reporting.settings import Settings
from reporting.storage.base import ObjectStore

LOCAL_DIR_NAME = "exports-store"


def build_store(settings: Settings) -> ObjectStore:
    """The configured store. No network call is made: an unreachable S3 shows on first use."""
    link_ttl = timedelta(hours=settings.exports.signed_url_ttl_hours)
    if settings.storage.bucket:
        from reporting.storage.s3 import S3Store  # boto3 is slow to import; only when used

        return S3Store(settings.storage, link_ttl=link_ttl)
    from reporting.storage.local import LocalStore, files_secret

    root = settings.storage.files_dir or settings.database.data_dir / LOCAL_DIR_NAME
    return LocalStore(
        root, files_secret(settings), link_ttl=link_ttl, public_url=settings.exports.public_url
    )
