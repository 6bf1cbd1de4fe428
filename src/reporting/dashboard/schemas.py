"""What the dashboard's own routes answer (the rest of its data comes from the /stats API)."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class GroupOption(BaseModel):
    id: str
    name: str


class GroupList(BaseModel):
    groups: list[GroupOption]
    truncated: bool
    """More groups matched than `limit`: the admin should narrow the search."""


class LevelOption(BaseModel):
    id: str
    name: str
    position: int


class TopicOption(BaseModel):
    id: str
    name: str
    level_id: str


class TopicCatalog(BaseModel):
    levels: list[LevelOption]
    topics: list[TopicOption]


AttentionKind = Literal["low_accuracy", "heavy_hints", "inactive"]
Severity = Literal["warning", "alert"]


class AttentionFlag(BaseModel):
    kind: AttentionKind
    severity: Severity
    value: float | None
    """The student's figure (accuracy, hints per attempt, days since the last attempt)."""
    group_value: float | None
    """The group's reference figure it is compared with."""


class StudentSummary(BaseModel):
    user_id: str
    display_name: str
    attempts: int
    correct: int
    accuracy: float | None
    score: float
    hints_used: int
    hints_per_attempt: float | None
    avg_time_seconds: float | None
    last_activity_at: datetime | None
    flags: list[AttentionFlag]


class GroupReference(BaseModel):
    """The group's own figures the flags are relative to (mean over its active students)."""

    avg_accuracy: float | None
    hints_per_attempt: float | None
    active_students: int
    inactive_after_days: int


class GroupStudents(BaseModel):
    group_id: str
    computed_at: datetime | None
    """The oldest progress summary among the students: how fresh the whole list is."""
    reference: GroupReference
    students: list[StudentSummary]
    """Every member, students needing attention first (alerts, then warnings), then by name."""
