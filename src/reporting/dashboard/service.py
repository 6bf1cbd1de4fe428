"""The group's students and who needs attention, relative to the group itself.

The figures are the worker's progress summaries (all-time, like every score in CONTRACT §2); the
flags compare each student with the group's own mean, so a strong group does not flag everyone
and a weak one does not hide its weakest students.
"""

from datetime import datetime

import psycopg

from reporting.auth.scope import Scope
from reporting.dashboard import queries
from reporting.dashboard.schemas import (
    AttentionFlag,
    GroupReference,
    GroupStudents,
    StudentSummary,
)
from reporting.errors import NotFound

# Percentage points below the group's mean accuracy.
ACCURACY_WARNING_GAP = 0.10
ACCURACY_ALERT_GAP = 0.20
# Hints per attempt: at least this many times the group's rate and this much above it (the
# second condition keeps a group that barely uses hints from flagging one hint).
HINTS_WARNING = (1.5, 0.25)
HINTS_ALERT = (2.0, 0.5)
INACTIVE_WARNING_DAYS = 7
INACTIVE_ALERT_DAYS = 14

_SEVERITY_ORDER = {"alert": 0, "warning": 1}


def _reference(members: list[queries.MemberRow]) -> GroupReference:
    active = [m.totals for m in members if m.totals is not None and m.totals.attempts > 0]
    attempts = sum(t.attempts for t in active)
    return GroupReference(
        avg_accuracy=sum(t.correct / t.attempts for t in active) / len(active) if active else None,
        hints_per_attempt=sum(t.hints_used for t in active) / attempts if attempts else None,
        active_students=len(active),
        inactive_after_days=INACTIVE_WARNING_DAYS,
    )


def _accuracy_flag(accuracy: float | None, reference: GroupReference) -> AttentionFlag | None:
    # Comparing a student with a group of one is comparing them with themselves.
    if accuracy is None or reference.avg_accuracy is None or reference.active_students < 2:
        return None
    gap = reference.avg_accuracy - accuracy
    if gap < ACCURACY_WARNING_GAP:
        return None
    return AttentionFlag(
        kind="low_accuracy",
        severity="alert" if gap >= ACCURACY_ALERT_GAP else "warning",
        value=accuracy,
        group_value=reference.avg_accuracy,
    )


def _hints_flag(rate: float | None, reference: GroupReference) -> AttentionFlag | None:
    if rate is None or reference.hints_per_attempt is None or reference.active_students < 2:
        return None
    group_rate = reference.hints_per_attempt

    def exceeds(rule: tuple[float, float]) -> bool:
        factor, margin = rule
        return rate >= group_rate * factor and rate - group_rate >= margin

    if not exceeds(HINTS_WARNING):
        return None
    return AttentionFlag(
        kind="heavy_hints",
        severity="alert" if exceeds(HINTS_ALERT) else "warning",
        value=rate,
        group_value=group_rate,
    )


def _inactivity_flag(last_activity_at: datetime | None, now: datetime) -> AttentionFlag | None:
    if last_activity_at is None:
        return AttentionFlag(kind="inactive", severity="alert", value=None, group_value=None)
    days = (now - last_activity_at).total_seconds() / 86400
    if days < INACTIVE_WARNING_DAYS:
        return None
    return AttentionFlag(
        kind="inactive",
        severity="alert" if days >= INACTIVE_ALERT_DAYS else "warning",
        value=round(days, 1),
        group_value=float(INACTIVE_WARNING_DAYS),
    )


def _summary(member: queries.MemberRow, reference: GroupReference, now: datetime) -> StudentSummary:
    totals = member.totals
    attempts = totals.attempts if totals else 0
    accuracy = totals.correct / attempts if totals and attempts else None
    hints_rate = totals.hints_used / attempts if totals and attempts else None
    flags = [
        flag
        for flag in (
            _accuracy_flag(accuracy, reference),
            _hints_flag(hints_rate, reference),
            _inactivity_flag(member.last_activity_at if attempts else None, now),
        )
        if flag is not None
    ]
    return StudentSummary(
        user_id=member.user_id,
        display_name=member.display_name,
        attempts=attempts,
        correct=totals.correct if totals else 0,
        accuracy=accuracy,
        score=totals.score if totals else 0.0,
        hints_used=totals.hints_used if totals else 0,
        hints_per_attempt=hints_rate,
        avg_time_seconds=totals.avg_time_seconds if totals else None,
        last_activity_at=member.last_activity_at,
        flags=flags,
    )


def _priority(student: StudentSummary) -> tuple[int, int, str, str]:
    worst = min((_SEVERITY_ORDER[f.severity] for f in student.flags), default=2)
    return (worst, -len(student.flags), student.display_name, student.user_id)


async def group_students(
    conn: psycopg.AsyncConnection, scope: Scope, group_id: str, *, now: datetime
) -> GroupStudents:
    """Every member with figures and flags; those needing attention first (alerts, then warnings)."""
    scope.require_stats_reader()
    scope.require_group(group_id)
    members = await queries.group_members(conn, group_id)
    if not members and not await queries.group_exists(conn, group_id):
        raise NotFound(f"There is no group {group_id!r}.")
    reference = _reference(members)
    students = sorted((_summary(m, reference, now) for m in members), key=_priority)
    computed = [m.computed_at for m in members if m.computed_at is not None]
    return GroupStudents(
        group_id=group_id,
        computed_at=min(computed) if computed else None,
        reference=reference,
        students=students,
    )
