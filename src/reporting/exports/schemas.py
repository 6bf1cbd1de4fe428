"""The export API's request and response bodies, and the filters an export is stored with.

`period.from` / `period.to` are ISO dates (whole UTC days, both inclusive) or ISO datetimes (a
datetime without an offset is UTC). `ExportFilters.bounds()` turns them into the half-open
interval [starts_at, ends_before) every query uses: a date `to` ends before the next midnight,
a datetime `to` one microsecond after itself (PostgreSQL's resolution), so both are inclusive.
"""

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reporting.locales import Locale

Format = Literal["csv", "pdf", "xlsx"]
ExportStatus = Literal["pending", "processing", "ready", "failed", "expired"]

MAX_TOPIC_IDS = 1000


def _parse_moment(value: object) -> date | datetime:
    if isinstance(value, datetime):
        parsed: date | datetime = value
    elif isinstance(value, date):
        parsed = value
    elif isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        parsed = date.fromisoformat(value)  # ValueError for 2026-02-30 -> 422
    elif isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ].+", value):
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    else:
        raise ValueError("must be an ISO date (2026-09-01) or datetime (2026-09-01T10:00:00Z)")
    if isinstance(parsed, datetime):
        parsed = (
            parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        ).replace(tzinfo=UTC)
    if not 1970 <= parsed.year <= 9998:  # keeps `to + 1 day` and the database in range
        raise ValueError("must be between the years 1970 and 9998")
    return parsed


def _format_moment(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


Moment = Annotated[
    date | datetime,
    PlainValidator(_parse_moment),
    PlainSerializer(_format_moment, return_type=str),
    WithJsonSchema(
        {"type": "string", "description": "ISO date (whole UTC day) or ISO datetime"},
        mode="validation",
    ),
    WithJsonSchema({"type": "string"}, mode="serialization"),
]


@dataclass(frozen=True, slots=True)
class Bounds:
    """A half-open UTC interval [starts_at, ends_before)."""

    starts_at: datetime
    ends_before: datetime


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    from_: Moment = Field(alias="from")
    to: Moment

    def bounds(self) -> Bounds:
        starts_at = (
            self.from_
            if isinstance(self.from_, datetime)
            else datetime.combine(self.from_, time.min, UTC)
        )
        ends_before = (
            self.to + timedelta(microseconds=1)
            if isinstance(self.to, datetime)
            else datetime.combine(self.to + timedelta(days=1), time.min, UTC)
        )
        return Bounds(starts_at=starts_at, ends_before=ends_before)

    @model_validator(mode="after")
    def _ordered(self) -> "Period":
        bounds = self.bounds()
        if bounds.starts_at >= bounds.ends_before:
            raise ValueError("period.from must not be after period.to")
        return self


def _distinct_topic_ids(value: list[str]) -> list[str]:
    if any(not topic_id or len(topic_id) > 200 for topic_id in value):
        raise ValueError("topic ids must be non-empty strings of at most 200 characters")
    return list(dict.fromkeys(value))


TopicIds = Annotated[
    list[str],
    Field(max_length=MAX_TOPIC_IDS, description="At most 1,000 ids; empty means every topic."),
    AfterValidator(_distinct_topic_ids),
]


class ExportFilters(BaseModel):
    """What an export covers; stored as `report_exports.filters` and echoed back."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    topic_ids: TopicIds = Field(default_factory=list)
    period: Period


class NotifyTarget(BaseModel):
    """Where to send the ready/failed notice besides the configured channels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = Field(default=None, max_length=254)
    telegram_chat_id: str | None = Field(default=None, max_length=64)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("must be an e-mail address")
        return value

    @field_validator("telegram_chat_id", mode="before")
    @classmethod
    def _chat_id(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not re.fullmatch(r"-?\d{1,20}|@[A-Za-z0-9_]{5,32}", value):
            raise ValueError("must be a numeric chat id or an @channel name")
        return value


class ExportCreate(BaseModel):
    """Body of `POST /stats/groups/{id}/export`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic_ids: TopicIds = Field(default_factory=list)
    period: Period
    format: Format
    locale: Locale | None = None
    notify: NotifyTarget | None = None

    def filters(self) -> ExportFilters:
        return ExportFilters(topic_ids=self.topic_ids, period=self.period)


def download_filename(group_id: str, filters: ExportFilters, format: Format) -> str:
    """e.g. `7A_2026-09-01_2026-09-30.csv` (characters no file system likes become `_`)."""
    period = filters.period.model_dump(mode="json", by_alias=True)
    stem = f"{group_id}_{period['from'][:10]}_{period['to'][:10]}"
    return re.sub(r'[\\/:*?"<>|\x00-\x1f\x7f]', "_", stem) + f".{format}"


class ExportRead(BaseModel):
    """One export as the API shows it; `download_url` only while it is ready."""

    id: UUID
    group_id: str
    format: Format
    locale: Locale
    filters: ExportFilters
    status: ExportStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    error: str | None
    download_url: str | None
    url_expires_at: datetime | None
