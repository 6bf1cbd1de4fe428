"""Every setting of the service, read from the environment (and `.env`) in one place.

Names are fixed by CONTRACT §4. Each capability gets its own section; `load_settings()` builds
them all once in the composition root (the CLI, `create_app`) and the result is passed on.
A bad value raises `SettingsError` whose message is one line naming the variable.
"""

import logging
import os
import re
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class SettingsError(Exception):
    """A setting is missing or malformed; str() is one line naming the variable."""


def _section() -> SettingsConfigDict:
    return SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=False,
        # `NAME=` (as a compose file or a template leaves it) means the default, as if unset.
        env_ignore_empty=True,
    )


# Upper bounds of the durations: finite (`inf` parses as a float, and an interval of 1e12 s
# crashed the worker after its first tick) and within what their users can take.
_DAY_SECS = 86_400
_MAX_INTERVAL_SECS = 31 * _DAY_SECS  # a monthly tick is the slowest schedule that makes sense
_MAX_EXPORT_TTL_HOURS = 366 * 24
# An S3 pre-signed link lives at most 7 days (SigV4); local links are held to the same.
_MAX_SIGNED_URL_TTL_HOURS = 7 * 24


class DatabaseSettings(BaseSettings):
    model_config = _section()

    url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path("./.reporting"), alias="REPORTING_DATA_DIR")

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError as error:
            # libpq's reason without the URL it quotes (which may hold a password), on one line
            reason = " ".join(str(error).split(' in URI: "')[0].split())
            raise ValueError(f"not a valid connection URL: {reason}") from None
        return value

    @model_validator(mode="after")
    def _data_dir_usable(self) -> "DatabaseSettings":
        """The embedded server's directory (only used without DATABASE_URL) must be a directory
        that exists or can be made: checked here, so a bad one is one line at start."""
        if self.url:
            return self
        existing = self.data_dir.absolute()
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"REPORTING_DATA_DIR {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"REPORTING_DATA_DIR {existing} is not writable")
        return self


class AuthSettings(BaseSettings):
    model_config = _section()

    jwt_secret: SecretStr | None = Field(default=None, alias="REPORTING_JWT_SECRET")
    jwt_public_key: str | None = Field(default=None, alias="REPORTING_JWT_PUBLIC_KEY")
    jwt_audience: str | None = Field(default=None, alias="REPORTING_JWT_AUDIENCE")
    jwt_issuer: str | None = Field(default=None, alias="REPORTING_JWT_ISSUER")

    @field_validator("jwt_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # empty is unset, as for the audience
        return value

    @property
    def weak_secret(self) -> bool:
        """The contract sets no minimum, and the platform that issues the tokens owns the
        secret: a short one is accepted, with a warning (RFC 7518 asks for 32+ bytes for HS256)."""
        return self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < 32

    @field_validator("jwt_audience", "jwt_issuer")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # docker-compose passes `${REPORTING_JWT_AUDIENCE:-}`: empty means "not checked"
        return value or None

    @field_validator("jwt_public_key")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if not value:
            return None
        value = value.replace("\\n", "\n")
        # SubjectPublicKeyInfo ("PUBLIC KEY") or PKCS#1 ("RSA PUBLIC KEY"): both load below.
        if not re.search(r"-----BEGIN (RSA )?PUBLIC KEY-----", value):
            raise ValueError("must be a PEM public key (-----BEGIN PUBLIC KEY-----)")
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        # Checked here so a bad key stops the process at start, not at the first request.
        try:
            key = load_pem_public_key(value.encode())
        except ValueError:
            raise ValueError("is not a readable PEM public key") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
            return value
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return value
        raise ValueError("must be an RSA key of 2048+ bits (RS256) or a P-256 EC key (ES256)")


class WorkerSettings(BaseSettings):
    model_config = _section()

    interval_secs: float = Field(
        default=3600, gt=0, le=_MAX_INTERVAL_SECS, alias="REPORTING_WORKER_INTERVAL_SECS"
    )
    enable_live_updates: bool = Field(default=False, alias="REPORTING_ENABLE_LIVE_UPDATES")
    leaderboard_size: int = Field(default=100, ge=1, le=10_000, alias="REPORTING_LEADERBOARD_SIZE")
    # How long a tick's swap waits for its table locks before failing (and retrying next tick).
    lock_timeout_secs: float = Field(
        default=30, gt=0, le=3600, alias="REPORTING_WORKER_LOCK_TIMEOUT_SECS"
    )
    # The niceness of a tick's PostgreSQL backends when the server runs on this machine
    # (db/priority.py): readers get the cores first. 0 leaves them as they are.
    nice: int = Field(default=19, ge=0, le=19, alias="REPORTING_WORKER_NICE")


class ExportSettings(BaseSettings):
    model_config = _section()

    ttl_hours: float = Field(
        default=24, gt=0, le=_MAX_EXPORT_TTL_HOURS, alias="REPORTING_EXPORT_TTL_HOURS"
    )
    rate_limit_per_hour: int = Field(default=5, ge=0, alias="REPORTING_EXPORT_RATE_LIMIT_PER_HOUR")
    signed_url_ttl_hours: float = Field(
        default=1, gt=0, le=_MAX_SIGNED_URL_TTL_HOURS, alias="REPORTING_SIGNED_URL_TTL_HOURS"
    )
    public_url: str | None = Field(default=None, alias="REPORTING_PUBLIC_URL")
    lease_seconds: float = Field(default=60, gt=0, le=3600, alias="REPORTING_EXPORT_LEASE_SECS")
    # Claims of one export before it fails (a worker that dies mid-export costs one).
    max_attempts: int = Field(default=3, ge=1, le=100, alias="REPORTING_EXPORT_MAX_ATTEMPTS")
    # The export worker's safety-net poll; LISTEN/NOTIFY wakes it at once anyway.
    poll_seconds: float = Field(default=5, gt=0, le=3600, alias="REPORTING_EXPORT_POLL_SECS")

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http(s):// URL")
        return value.rstrip("/")


class StorageSettings(BaseSettings):
    model_config = _section()

    endpoint: str | None = Field(default=None, alias="OBJECT_STORAGE_ENDPOINT")
    bucket: str | None = Field(default=None, alias="OBJECT_STORAGE_BUCKET")
    access_key: str | None = Field(default=None, alias="OBJECT_STORAGE_ACCESS_KEY")
    secret_key: SecretStr | None = Field(
        default=None, alias="OBJECT_STORAGE_SECRET_KEY", validate_default=True
    )
    region: str = Field(default="us-east-1", alias="OBJECT_STORAGE_REGION")
    prefix: str = Field(default="", alias="OBJECT_STORAGE_PREFIX")
    # Local backend (no bucket): where the files live and the key that signs their links.
    files_dir: Path | None = Field(default=None, alias="REPORTING_FILES_DIR")
    files_secret: SecretStr | None = Field(default=None, alias="REPORTING_FILES_SECRET")

    @field_validator("endpoint", "bucket", "access_key")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative key prefix (no leading / and no ..)")
        return value

    @field_validator("files_secret")
    @classmethod
    def _files_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("secret_key")
    @classmethod
    def _keys_in_pairs(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None
        if (value is None) != (info.data.get("access_key") is None):
            raise ValueError(
                "set both OBJECT_STORAGE_ACCESS_KEY and OBJECT_STORAGE_SECRET_KEY, or neither"
            )
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not 3 <= len(value) <= 63:
            raise ValueError("must be 3 to 63 characters")
        return value


class NotifySettings(BaseSettings):
    model_config = _section()

    smtp_host: str | None = Field(default=None, alias="REPORTING_SMTP_HOST")
    smtp_port: int = Field(default=25, ge=1, le=65535, alias="REPORTING_SMTP_PORT")
    smtp_from: str = Field(default="reports@localhost", alias="REPORTING_SMTP_FROM")
    smtp_user: str | None = Field(default=None, alias="REPORTING_SMTP_USER")
    smtp_password: SecretStr | None = Field(default=None, alias="REPORTING_SMTP_PASSWORD")
    smtp_starttls: bool = Field(default=False, alias="REPORTING_SMTP_STARTTLS")
    telegram_bot_token: SecretStr | None = Field(default=None, alias="REPORTING_TELEGRAM_BOT_TOKEN")
    telegram_chat_id: str | None = Field(default=None, alias="REPORTING_TELEGRAM_CHAT_ID")
    telegram_api_base: str = Field(
        default="https://api.telegram.org", alias="REPORTING_TELEGRAM_API_BASE"
    )
    webhook_url: str | None = Field(default=None, alias="REPORTING_WEBHOOK_URL")
    webhook_secret: SecretStr | None = Field(default=None, alias="REPORTING_WEBHOOK_SECRET")
    max_attempts: int = Field(default=8, ge=1, alias="REPORTING_NOTIFY_MAX_ATTEMPTS")
    # Backoff between attempts: base * 2^(attempt-1), capped, plus up to 25 % jitter.
    retry_base_secs: float = Field(
        default=30, gt=0, le=_DAY_SECS, alias="REPORTING_NOTIFY_RETRY_BASE_SECS"
    )
    retry_max_secs: float = Field(
        default=3600, gt=0, le=7 * _DAY_SECS, alias="REPORTING_NOTIFY_RETRY_MAX_SECS"
    )
    timeout_secs: float = Field(default=10, gt=0, le=120, alias="REPORTING_NOTIFY_TIMEOUT_SECS")

    @field_validator("smtp_host", "telegram_chat_id", "webhook_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @field_validator("webhook_url", "telegram_api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @field_validator("telegram_api_base")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> "NotifySettings":
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "REPORTING_WEBHOOK_SECRET is required when REPORTING_WEBHOOK_URL is set"
            )
        return self


class LogSettings(BaseSettings):
    model_config = _section()

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="REPORTING_LOG_LEVEL"
    )
    json_logs: bool = Field(default=True, alias="REPORTING_LOG_JSON")

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class ApiSettings(BaseSettings):
    model_config = _section()

    # Written by `reporting demo`: ready-made tokens the dashboard offers on its sign-in page.
    demo_tokens_file: Path | None = Field(default=None, alias="REPORTING_DEMO_TOKENS_FILE")


class Settings:
    """All sections together; build with `load_settings()`."""

    def __init__(
        self,
        *,
        database: DatabaseSettings,
        auth: AuthSettings,
        worker: WorkerSettings,
        exports: ExportSettings,
        storage: StorageSettings,
        notify: NotifySettings,
        log: LogSettings,
        api: ApiSettings,
    ) -> None:
        self.database = database
        self.auth = auth
        self.worker = worker
        self.exports = exports
        self.storage = storage
        self.notify = notify
        self.log = log
        self.api = api

    def warnings(self) -> list[str]:
        """What is accepted but unwise, for the process to log once its logging is set up (as
        JSON lines when REPORTING_LOG_JSON, like everything else it logs)."""
        found = []
        if self.auth.weak_secret:
            found.append(
                "REPORTING_JWT_SECRET is shorter than 32 bytes: tokens signed with it are easier"
                " to forge by guessing it; use 32 or more random characters"
            )
        return found


_SECTIONS: dict[str, type[BaseSettings]] = {
    "database": DatabaseSettings,
    "auth": AuthSettings,
    "worker": WorkerSettings,
    "exports": ExportSettings,
    "storage": StorageSettings,
    "notify": NotifySettings,
    "log": LogSettings,
    "api": ApiSettings,
}


def _one_line(section: type[BaseSettings], error: ValidationError) -> str:
    first = error.errors()[0]
    field_name = str(first["loc"][0]) if first["loc"] else ""
    field = section.model_fields.get(field_name)
    variable = (
        field.alias if field is not None and field.alias else field_name
    ) or section.__name__
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] and message.startswith("REPORTING_"):
        variable, _, message = message.partition(" ")
    return f"invalid setting {variable}: {message}"


def load_settings(*, require_jwt: bool = True, **overrides: BaseSettings) -> Settings:
    """Read every section from the environment; raise SettingsError with one line on a bad value.

    `require_jwt` is off for commands that never check a token (migrate, seed, workers).
    """
    built: dict[str, BaseSettings] = {}
    for name, section in _SECTIONS.items():
        if name in overrides:
            built[name] = overrides[name]
            continue
        try:
            built[name] = section()
        except ValidationError as error:
            raise SettingsError(_one_line(section, error)) from None
    settings = Settings(**built)  # type: ignore[arg-type]
    if require_jwt and settings.auth.jwt_secret is None and settings.auth.jwt_public_key is None:
        raise SettingsError(
            "missing setting REPORTING_JWT_SECRET: set it (or REPORTING_JWT_PUBLIC_KEY) to verify tokens"
        )
    return settings
