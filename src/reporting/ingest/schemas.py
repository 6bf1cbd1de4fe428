"""Bodies of the ingestion routes and the attempt record that the API and the file commands share.

Text fields are non-blank, bounded and free of NUL characters (reporting/ids.py says why); the
ids of groups, users, levels and topics also hold no `/`. A timestamp without a zone is
taken as UTC. Unknown fields are ignored, so the platform may send more than we store.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    ValidationError,
)

from reporting.errors import ValidationFailed
from reporting.ids import EntityId, Id, printable

MAX_BATCH = 10_000
"""Attempts per `POST /ingest/attempts` request (CONTRACT §5)."""

MAX_LISTED_ERRORS = 100
"""Entries a 422 lists at most; its detail still says how many were bad."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
# Far beyond any real score, and small enough that no sum of them can overflow (migration 0005
# holds the database to it as well).
MAX_ABS_SCORE = 1e9


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Name = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(printable)]
Timestamp = Annotated[datetime, AfterValidator(_utc)]


# --- directory -------------------------------------------------------------------------------


class GroupUpsert(BaseModel):
    id: EntityId
    name: Name


class UserUpsert(BaseModel):
    id: EntityId
    display_name: Name
    group_ids: list[Id] | None = Field(
        default=None,
        description="Replaces the user's memberships ([] removes them all); left out, they stay.",
    )


class LevelUpsert(BaseModel):
    id: EntityId
    name: Name
    position: int = Field(default=0, ge=-_INT32_MAX, le=_INT32_MAX)


class TopicUpsert(BaseModel):
    id: EntityId
    name: Name
    level_id: Id


class DirectoryUpsert(BaseModel):
    groups: list[GroupUpsert] = Field(default_factory=list)
    users: list[UserUpsert] = Field(default_factory=list)
    levels: list[LevelUpsert] = Field(default_factory=list)
    topics: list[TopicUpsert] = Field(default_factory=list)


class DirectoryCounts(BaseModel):
    """Entries upserted per kind; `memberships` is the number of (user, group) pairs now set."""

    groups: int
    users: int
    levels: int
    topics: int
    memberships: int


# --- attempts --------------------------------------------------------------------------------


class AttemptCreate(BaseModel):
    event_id: Id
    user_id: Id
    group_id: Id
    topic_id: Id
    task_id: Id
    is_correct: bool
    score: float = Field(allow_inf_nan=False, ge=-MAX_ABS_SCORE, le=MAX_ABS_SCORE)
    hints_used: int = Field(ge=0, le=_INT32_MAX)
    time_spent_ms: int = Field(ge=0, le=_INT64_MAX)
    attempted_at: Timestamp


ATTEMPT_FIELDS: tuple[str, ...] = tuple(AttemptCreate.model_fields)
"""The attempt's field names in storage order (also the CSV header)."""


class AttemptBatch(BaseModel):
    attempts: list[AttemptCreate] = Field(max_length=MAX_BATCH)


class AttemptsIngestedRead(BaseModel):
    inserted: int
    duplicates: int


ATTEMPT_BATCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["attempts"],
                    "properties": {
                        "attempts": {
                            "type": "array",
                            "maxItems": MAX_BATCH,
                            "items": AttemptCreate.model_json_schema(),
                        }
                    },
                }
            }
        },
    }
}
"""The body of `POST /ingest/attempts` for the OpenAPI document (the route parses it itself)."""


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad entry: where it is (`loc`, as in every 422 of the API), what is wrong, a type tag."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    @property
    def where(self) -> str:
        """('users', 3, 'group_ids', 0) -> 'users[3].group_ids[0]'."""
        name = ""
        for part in self.loc:
            name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
        return name

    def as_problem(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class EntriesRejected(ValidationFailed):
    """The 422 for bad entries: its body lists the first MAX_LISTED_ERRORS of them, in order;
    all of them stay typed for the file commands' messages."""

    def __init__(
        self,
        detail: str,
        errors: list[FieldError],
        *,
        well_formed: Sequence[tuple[int, "AttemptCreate"]] = (),
    ) -> None:
        super().__init__(detail, [e.as_problem() for e in errors[:MAX_LISTED_ERRORS]])
        self.field_errors = errors
        # A batch rejected for malformed attempts: its other attempts, by position, so their ids
        # can be checked too and one answer name every bad index (ingest.service).
        self.well_formed = well_formed


def field_errors(error: ValidationError) -> list[FieldError]:
    return [
        FieldError(loc=tuple(e["loc"]), msg=e["msg"], type=e["type"])
        for e in error.errors(include_url=False)
    ]


def bad_entries_detail(count: int, indexes: list[int], *, one: str, many: str) -> str:
    """E.g. '2 attempts are not valid (indexes 3, 17); nothing was written.' (`many`; `one` is
    the singular: 'attempt is not valid')."""
    shown = ", ".join(str(i) for i in indexes[:20]) + (", …" if count > 20 else "")
    label = "index" if count == 1 else "indexes"
    return f"{count} {one if count == 1 else many} ({label} {shown}); nothing was written."


def parse_attempt_batch(raw: bytes) -> AttemptBatch:
    """The body of `POST /ingest/attempts`, validated strictly; ValidationFailed names the indexes."""
    try:
        return AttemptBatch.model_validate_json(raw, strict=True)
    except ValidationError as error:
        errors = field_errors(error)
        too_long = [e for e in error.errors(include_url=False) if e["type"] == "too_long"]
    if too_long:
        count = too_long[0].get("ctx", {}).get("actual_length")
        has = f"{count:,}" if isinstance(count, int) else "more"
        raise EntriesRejected(
            f"A batch holds at most {MAX_BATCH:,} attempts; this one has {has}. Split it"
            " into smaller batches; nothing was written.",
            [FieldError(("attempts",), f"at most {MAX_BATCH:,} attempts", "too_long")],
        )
    for e in errors:
        if e.type == "json_invalid":
            raise EntriesRejected(f"The body is not valid JSON: {e.msg}.", [e])
    indexes = bad_indexes(errors)
    if not indexes:
        raise EntriesRejected('The body must be an object {"attempts": [...]}.', errors)
    detail = bad_entries_detail(
        len(indexes), indexes, one="attempt is not valid", many="attempts are not valid"
    )
    raise EntriesRejected(detail, errors, well_formed=_well_formed(raw, set(indexes)))


def bad_indexes(errors: list[FieldError]) -> list[int]:
    """The positions of the bad entries: ("attempts", 3, "hints_used") -> 3."""
    return sorted({i for e in errors for i in e.loc[1:2] if isinstance(i, int)})


def _well_formed(raw: bytes, bad: set[int]) -> list[tuple[int, AttemptCreate]]:
    """The attempts of a rejected batch that are valid on their own (only a rejected batch is
    parsed twice), each validated as the batch validates it."""
    try:
        entries = json.loads(raw)["attempts"]
        return [
            (i, AttemptCreate.model_validate_json(json.dumps(entry), strict=True))
            for i, entry in enumerate(entries)
            if i not in bad
        ]
    except (ValueError, TypeError, KeyError):  # ValidationError is a ValueError
        return []  # the 422 then names the malformed ones only, as it would have
