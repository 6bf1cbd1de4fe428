"""An independent computation of what an export must contain, in plain Python over the raw
attempts the test wrote (no SQL, no code from reporting.exports)."""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from tests.builders import Attempt
from tests.kpis import metrics


@dataclass(frozen=True)
class Student:
    user_id: str
    display_name: str
    group_ids: tuple[str, ...]


@dataclass(frozen=True)
class Topic:
    topic_id: str
    name: str
    level_id: str


@dataclass(frozen=True)
class ExpectedRow:
    group_id: str
    group_name: str
    user_id: str
    display_name: str
    topic_id: str
    topic_name: str
    level_id: str
    attempts: int
    correct: int
    accuracy: Decimal
    score: float
    hints_used: int
    avg_time_seconds: float
    first_attempt_at: datetime
    last_attempt_at: datetime


@dataclass(frozen=True)
class ExpectedKpis:
    total_attempts: int
    total_users: int
    avg_accuracy: float
    avg_score: float
    hint_usage_rate: float
    avg_hints: float
    avg_time_seconds: float


def window(start: date | datetime, end: date | datetime) -> tuple[datetime, datetime]:
    """Inclusive bounds as the contract words them: a date is a whole UTC day."""
    lo = start if isinstance(start, datetime) else datetime.combine(start, time.min, UTC)
    if isinstance(end, datetime):
        return lo, end
    return lo, datetime.combine(end, time.min, UTC) + timedelta(days=1) - timedelta(microseconds=1)


def selected(
    attempts: list[Attempt],
    *,
    group_id: str,
    students: dict[str, Student],
    start: date | datetime,
    end: date | datetime,
    topic_ids: list[str],
) -> list[Attempt]:
    lo, hi = window(start, end)
    return [
        a
        for a in attempts
        if a.group_id == group_id
        and group_id in students[a.user_id].group_ids
        and lo <= a.attempted_at <= hi
        and (not topic_ids or a.topic_id in topic_ids)
    ]


def expected_rows(
    attempts: list[Attempt],
    *,
    group_id: str,
    group_name: str,
    students: dict[str, Student],
    topics: dict[str, Topic],
    start: date | datetime,
    end: date | datetime,
    topic_ids: list[str],
) -> list[ExpectedRow]:
    chosen = selected(
        attempts,
        group_id=group_id,
        students=students,
        start=start,
        end=end,
        topic_ids=topic_ids,
    )
    by_pair: dict[tuple[str, str], list[Attempt]] = {}
    for a in chosen:
        by_pair.setdefault((a.user_id, a.topic_id), []).append(a)
    rows = []
    for (user_id, topic_id), items in by_pair.items():
        correct = sum(1 for a in items if a.is_correct)
        rows.append(
            ExpectedRow(
                group_id=group_id,
                group_name=group_name,
                user_id=user_id,
                display_name=students[user_id].display_name,
                topic_id=topic_id,
                topic_name=topics[topic_id].name,
                level_id=topics[topic_id].level_id,
                attempts=len(items),
                correct=correct,
                accuracy=(Decimal(correct) / Decimal(len(items))).quantize(
                    Decimal("0.0001"), rounding=ROUND_HALF_UP
                ),
                score=math.fsum(a.score for a in items),
                hints_used=sum(a.hints_used for a in items),
                avg_time_seconds=math.fsum(a.time_spent_ms / 1000 for a in items) / len(items),
                first_attempt_at=min(a.attempted_at for a in items),
                last_attempt_at=max(a.attempted_at for a in items),
            )
        )
    # Code-point order of the strings, as the contract's ordering is implemented.
    rows.sort(key=lambda r: (r.display_name, r.user_id, r.topic_id))
    return rows


def expected_kpis(chosen: list[Attempt]) -> ExpectedKpis:
    """CONTRACT §2 over one set of attempts."""
    return ExpectedKpis(**metrics(chosen))  # type: ignore[arg-type]  # the counts are ints


def iso_z(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"
