"""What every channel says about a finished export: `ExportNotice`, and the one error a channel
raises when a delivery did not go through (`DeliveryFailed`)."""

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from reporting.locales import DEFAULT_LOCALE, LOCALES, Locale

Status = Literal["ready", "failed"]
Event = Literal["export.ready", "export.failed"]
# Why an export failed, for the words a teacher reads (notify/messages.py); `error` is the text
# the API and the webhook carry.
Failure = Literal["storage", "too_large", "not_visible", "worker_stopped", "internal"]


class DeliveryFailed(Exception):
    """One delivery attempt failed; str() is the reason kept in the outbox. `retry_after` is the
    receiver's own wish (HTTP Retry-After, Telegram's retry_after), in seconds."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ExportNotice:
    """An export reached `ready` or `failed`; who to tell is in `email` / `telegram_chat_id`
    (the request's own choices; the configured defaults apply when these are None)."""

    export_id: str
    group_id: str
    group_name: str
    format: str
    status: Status
    download_url: str | None = None
    url_expires_at: datetime | None = None
    error: str | None = None
    failure: Failure | None = None
    email: str | None = None
    telegram_chat_id: str | None = None
    locale: Locale = DEFAULT_LOCALE
    request_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.export_id, uuid.UUID):  # callers often hold the UUID itself
            object.__setattr__(self, "export_id", str(self.export_id))
        if self.status not in ("ready", "failed"):
            raise ValueError(f"status must be 'ready' or 'failed', not {self.status!r}")
        if self.locale not in LOCALES:
            raise ValueError(f"locale must be one of {LOCALES}, not {self.locale!r}")
        if self.url_expires_at is not None and self.url_expires_at.tzinfo is None:
            raise ValueError("url_expires_at must be timezone-aware")

    @property
    def event(self) -> Event:
        return "export.ready" if self.status == "ready" else "export.failed"

    def to_payload(self) -> dict[str, object]:
        """The JSON kept in the outbox row."""
        data = asdict(self)
        data["url_expires_at"] = iso_utc(self.url_expires_at)
        return data

    @classmethod
    def from_payload(cls, data: Mapping[str, object]) -> "ExportNotice":
        expires = data.get("url_expires_at")
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        fields["url_expires_at"] = datetime.fromisoformat(str(expires)) if expires else None
        return cls(**fields)  # type: ignore[arg-type]


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, as the API writes timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
