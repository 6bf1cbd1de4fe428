"""The derived records of CONTRACT §2 computed naively in plain Python, to check the SQL against.

Written from the contract's definitions, not from the SQL: every scope filters the raw attempts
afresh and groups them by user; no partial sums, no halves, no merging. Slow and obvious on
purpose. The orderings the contract leaves open follow the worker's documented choices
(stats/aggregate.py): levels by (position, id), topics by (their level's position and id, topic
id), every directory user with a summary (zero totals without attempts).
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tests.builders import Attempt
from tests.kpis import metrics

PROGRESS_KEYS = frozenset(
    {"attempts", "correct", "accuracy", "score", "hints_used", "avg_time_seconds"}
)


@dataclass(frozen=True)
class Level:
    id: str
    position: int


@dataclass(frozen=True)
class Topic:
    id: str
    level_id: str


@dataclass(frozen=True)
class User:
    id: str
    display_name: str
    group_ids: tuple[str, ...]


@dataclass(frozen=True)
class School:
    groups: tuple[str, ...]
    levels: tuple[Level, ...]
    topics: tuple[Topic, ...]
    users: tuple[User, ...]
    attempts: tuple[Attempt, ...]

    def level_of(self, topic_id: str) -> str:
        return next(t.level_id for t in self.topics if t.id == topic_id)


@dataclass(frozen=True)
class StatRow:
    group_id: str | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class Ranking:
    rank: int
    user_id: str
    display_name: str
    score: float
    accuracy: float
    attempts: int


@dataclass(frozen=True)
class Summary:
    totals: dict[str, object]
    levels: list[dict[str, object]]
    topics: list[dict[str, object]]
    last_activity_at: object


def _by_user(attempts: Iterable[Attempt]) -> dict[str, list[Attempt]]:
    users: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        users[attempt.user_id].append(attempt)
    return users


def materialized_stats(school: School) -> dict[tuple[str, str], StatRow]:
    """(type, entity_id) -> row, for every row the worker must write."""
    rows: dict[tuple[str, str], StatRow] = {}
    attempts = school.attempts
    for group in school.groups:
        mine = [a for a in attempts if a.group_id == group]
        rows["group", group] = StatRow(group, metrics(mine))
        for level in school.levels:
            pair = [a for a in mine if school.level_of(a.topic_id) == level.id]
            if pair:
                rows["group_level", f"{group}:{level.id}"] = StatRow(group, metrics(pair))
        for topic in school.topics:
            pair = [a for a in mine if a.topic_id == topic.id]
            if pair:
                rows["group_topic", f"{group}:{topic.id}"] = StatRow(group, metrics(pair))
    for level in school.levels:
        mine = [a for a in attempts if school.level_of(a.topic_id) == level.id]
        rows["level", level.id] = StatRow(None, metrics(mine))
    for topic in school.topics:
        mine = [a for a in attempts if a.topic_id == topic.id]
        rows["topic", topic.id] = StatRow(None, metrics(mine))
    return rows


def score_key(score: float) -> int:
    """How boards compare scores: to 6 decimal places (0.1 + 0.2 + 0.3 ties 0.6)."""
    return round(score * 1e6)


def _board(school: School, attempts: list[Attempt], size: int) -> list[Ranking]:
    names = {u.id: u.display_name for u in school.users}
    entries = []
    for user_id, mine in _by_user(attempts).items():
        score = sum(a.score for a in mine)
        accuracy = sum(a.is_correct for a in mine) / len(mine)
        entries.append((user_id, score, accuracy, len(mine)))
    # score desc, accuracy desc, user_id asc (byte order: the ids are compared as COLLATE "C");
    # scores compared to 6 decimal places, so that equal totals tie however they were added up
    entries.sort(key=lambda e: e[0].encode())
    entries.sort(key=lambda e: (-score_key(e[1]), -e[2]))
    return [
        Ranking(
            rank=1 + sum(1 for other in entries if score_key(other[1]) > score_key(score)),
            user_id=user_id,
            display_name=names[user_id],
            score=score,
            accuracy=accuracy,
            attempts=count,
        )
        for user_id, score, accuracy, count in entries[:size]
    ]


def leaderboards(school: School, size: int) -> dict[tuple[str, str], list[Ranking]]:
    """(scope, scope_id) -> rankings: global, every group, every level."""
    boards = {("global", "global"): _board(school, list(school.attempts), size)}
    for group in school.groups:
        boards["group", group] = _board(
            school, [a for a in school.attempts if a.group_id == group], size
        )
    for level in school.levels:
        boards["level", level.id] = _board(
            school, [a for a in school.attempts if school.level_of(a.topic_id) == level.id], size
        )
    return boards


def _entry(attempts: list[Attempt], **ids: str) -> dict[str, object]:
    n = len(attempts)
    correct = sum(a.is_correct for a in attempts)
    return {
        **ids,
        "attempts": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "score": sum(a.score for a in attempts),
        "hints_used": sum(a.hints_used for a in attempts),
        "avg_time_seconds": sum(a.time_spent_ms / 1000 for a in attempts) / n if n else 0.0,
    }


def progress_summaries(school: School) -> dict[str, Summary]:
    """user_id -> summary, for every user of the directory."""
    levels = sorted(school.levels, key=lambda lv: (lv.position, lv.id.encode()))
    level_rank = {lv.id: i for i, lv in enumerate(levels)}
    topics = sorted(school.topics, key=lambda t: (level_rank[t.level_id], t.id.encode()))
    summaries = {}
    for user in school.users:
        mine = [a for a in school.attempts if a.user_id == user.id]
        per_level = {
            lv.id: [a for a in mine if school.level_of(a.topic_id) == lv.id] for lv in levels
        }
        per_topic = {t.id: [a for a in mine if a.topic_id == t.id] for t in topics}
        summaries[user.id] = Summary(
            totals=_entry(mine),
            levels=[_entry(per_level[lv.id], level_id=lv.id) for lv in levels if per_level[lv.id]],
            topics=[
                _entry(per_topic[t.id], topic_id=t.id, level_id=t.level_id)
                for t in topics
                if per_topic[t.id]
            ],
            last_activity_at=max((a.attempted_at for a in mine), default=None),
        )
    return summaries
