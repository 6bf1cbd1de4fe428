"""Exports in an S3 bucket (AWS, MinIO, Ceph, …) with SigV4 pre-signed download links.

Timeouts and retries are short on purpose: a store that is down or hangs must fail an upload in
seconds (the export is taken again later), not hold the worker and the exports queued behind it.
With a store that accepts connections and never answers, an upload gives up after 2 x 10 s (it
took ~90 s with 30 s reads, three times per export).
"""

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from reporting.settings import StorageSettings
from reporting.storage.base import StorageError, content_disposition

CONNECT_TIMEOUT_SECS = 3
READ_TIMEOUT_SECS = 10  # per socket read: an S3 answer, not a whole upload
MAX_ATTEMPTS = 2  # the first try included (botocore's `max_attempts` would not count it)
_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024, max_concurrency=4
)


def _status(error: ClientError) -> int | None:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _reason(error: BaseException) -> str:
    """A short human reason for a boto error, without the SDK's boilerplate."""
    # upload_file wraps the client's error in S3UploadFailedError; the real one is its context.
    cause = error.__context__ if isinstance(error, Boto3Error) else error
    if isinstance(cause, ClientError):
        info = cause.response.get("Error", {})
        code = str(info.get("Code", "?"))
        status = _status(cause)
        if code == "NoSuchBucket":
            return "the bucket does not exist"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access denied ({code}); check OBJECT_STORAGE_ACCESS_KEY/SECRET_KEY"
        return f"{code} (HTTP {status}): {info.get('Message', '')}".strip()
    if isinstance(cause, BotoCoreError):
        return f"{type(cause).__name__}: {cause}"
    return str(error)


class S3Store:
    """An ObjectStore over one bucket; keys arrive complete (prefix included, see export_key)."""

    def __init__(self, settings: StorageSettings, *, link_ttl: timedelta) -> None:
        if settings.bucket is None:
            raise ValueError("OBJECT_STORAGE_BUCKET is required for the S3 store")
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint
        self.link_ttl = link_ttl
        config = Config(
            signature_version="s3v4",
            # A custom endpoint (MinIO, moto, Ceph) rarely has wildcard DNS for virtual hosts.
            s3={"addressing_style": "path" if settings.endpoint else "auto"},
            connect_timeout=CONNECT_TIMEOUT_SECS,
            read_timeout=READ_TIMEOUT_SECS,
            retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        )
        self.client: BaseClient = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=(
                settings.secret_key.get_secret_value() if settings.secret_key else None
            ),
            config=config,
        )

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}" + (f" at {self.endpoint}" if self.endpoint else "")

    def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        """Upload from disk (multipart above 16 MiB)."""
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=_TRANSFER,
            )
        except (Boto3Error, BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot upload {self._where(key)}: {_reason(error)}") from error

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot delete {self._where(key)}: {_reason(error)}") from error

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _status(error) == 404:
                return False
            raise StorageError(f"cannot check {self._where(key)}: {_reason(error)}") from error
        except BotoCoreError as error:
            raise StorageError(f"cannot check {self._where(key)}: {_reason(error)}") from error
        return True

    def check(self) -> None:
        """Raise StorageError unless the bucket is reachable and ours (the export worker checks
        at start)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as error:
            missing = isinstance(error, ClientError) and _status(error) == 404
            reason = "the bucket does not exist" if missing else _reason(error)
            where = f" at {self.endpoint}" if self.endpoint else ""
            raise StorageError(
                f"object storage bucket {self.bucket!r}{where} is not usable: {reason}"
            ) from error

    def signed_url(
        self, key: str, *, expires_at: datetime, filename: str, base_url: str | None = None
    ) -> str:
        """A SigV4 pre-signed GET (no network call); `base_url` does not apply to S3."""
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        remaining = (expires_at - datetime.now(UTC)).total_seconds()
        # Whole seconds, rounded down: the link must never outlive the export.
        expires_in = math.floor(min(remaining, self.link_ttl.total_seconds()))
        if expires_in < 1:
            raise ValueError("the link would already be expired")
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                },
                ExpiresIn=expires_in,
            )
        except BotoCoreError as error:
            raise StorageError(f"cannot sign a link to {self._where(key)}: {error}") from error
        return url
