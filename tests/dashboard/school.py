"""A small school for the dashboard tests, and its derived statistics.

Two groups belong to the test teacher (7А, 7Б), one is foreign (9В, with names that must never
show up on the teacher's screen). In 7А each student has a profile the "needs attention" list must
find: a weak one, a hint-heavy one, one idle for ten days, one who never started.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from tests import builders
from tests.builders import Attempt, Ranking
from tests.kpis import metrics

# Named so that alphabetical order is not course order (the levels table keeps course order).
LEVELS = {"L1": ("Первый уровень", 1), "L2": ("Второй уровень", 2)}
TOPICS = {
    "T1": ("Дроби", "L1"),
    "T2": ("Уравнения", "L1"),
    "T3": ("Геометрия", "L2"),
    "T4": ("Проценты", "L2"),
}
GROUPS = {"g-a": "7А класс", "g-b": "7Б класс", "g-x": "9В класс"}
TEACHER_GROUPS = ["g-a", "g-b"]
FOREIGN_GROUP = "g-x"
FOREIGN_NAMES = ("Чужой Секретов", "Чужая Тайнова")


@dataclass(frozen=True)
class Profile:
    """How a student works: accuracy (in tenths), hints per attempt, days since the last attempt."""

    user_id: str
    name: str
    group_id: str
    tenths_correct: int = 8
    hints: int = 0
    idle_days: int = 1
    active: bool = True


PROFILES = [
    Profile("a1", "Анна Смирнова", "g-a", tenths_correct=9),
    Profile("a2", "Борис Иванов", "g-a", tenths_correct=8),
    Profile("a3", "Вера Кузнецова", "g-a", tenths_correct=3),
    Profile("a4", "Глеб Попов", "g-a", tenths_correct=7, hints=3),
    Profile("a5", "Дина Соколова", "g-a", tenths_correct=8, idle_days=10),
    Profile("a6", "Егор Лебедев", "g-a", active=False),
    Profile("b1", "Жанна Морозова", "g-b", tenths_correct=6),
    Profile("b2", "Захар Волков", "g-b", tenths_correct=5, hints=1),
    Profile("x1", FOREIGN_NAMES[0], "g-x", tenths_correct=10),
    Profile("x2", FOREIGN_NAMES[1], "g-x", tenths_correct=2),
]

RECENT_PER_TOPIC = 8  # attempts within the last week (or the idle period) per student and topic
OLD_PER_TOPIC = 2  # attempts 40 days ago per student and topic
OLD_DAYS = 40


@dataclass
class School:
    now: datetime
    attempts: list[Attempt] = field(default_factory=list)

    def attempts_of(self, **where: str) -> list[Attempt]:
        return [a for a in self.attempts if all(getattr(a, k) == v for k, v in where.items())]


# Topics differ in difficulty; the shifts cancel out, so a student's accuracy stays theirs.
TOPIC_SHIFT = {"T1": 1, "T2": 0, "T3": 0, "T4": -1}


def _attempts(profile: Profile, now: datetime) -> list[Attempt]:
    if not profile.active:
        return []
    made = []
    for topic_index, topic_id in enumerate(TOPICS):
        tenths = min(10, max(0, profile.tenths_correct + TOPIC_SHIFT[topic_id]))
        for i in range(RECENT_PER_TOPIC + OLD_PER_TOPIC):
            recent = i < RECENT_PER_TOPIC
            age = (
                timedelta(days=profile.idle_days, hours=i + topic_index)
                if recent
                else timedelta(days=OLD_DAYS, hours=i)
            )
            made.append(
                Attempt(
                    user_id=profile.user_id,
                    group_id=profile.group_id,
                    topic_id=topic_id,
                    is_correct=(i + topic_index) % 10 < tenths,
                    score=2.0 if (i + topic_index) % 10 < tenths else 0.5,
                    hints_used=profile.hints if i % 2 == 0 else 0,
                    time_spent_ms=20_000 + 1_000 * ((i * 7 + topic_index) % 13),
                    attempted_at=now - age,
                    task_id=f"task-{topic_id}-{i}",
                    event_id=f"ev-{profile.user_id}-{topic_id}-{i}",
                )
            )
    return made


def build_school(conn: psycopg.Connection) -> School:
    """Directory rows and attempts (committed by the caller); attempt times relative to now."""
    school = School(now=datetime.now(UTC).replace(microsecond=0))
    for level_id, (name, position) in LEVELS.items():
        builders.make_level(conn, level_id, position, name)
    for topic_id, (name, level_id) in TOPICS.items():
        builders.make_topic(conn, topic_id, level_id, name)
    for group_id, name in GROUPS.items():
        builders.make_group(conn, group_id, name)
    for profile in PROFILES:
        builders.make_user(conn, profile.user_id, [profile.group_id], profile.name)
        school.attempts += _attempts(profile, school.now)
    builders.make_attempts(conn, school.attempts)
    return school


# --- the derived rows, computed here from the definitions of CONTRACT §2 -----------------------


@dataclass
class _Tally:
    attempts: int = 0
    correct: int = 0
    score: float = 0.0
    hints: int = 0
    hinted: int = 0
    time_ms: int = 0
    last: datetime | None = None

    def add(self, a: Attempt) -> None:
        self.attempts += 1
        self.correct += a.is_correct
        self.score += a.score
        self.hints += a.hints_used
        self.hinted += a.hints_used > 0
        self.time_ms += a.time_spent_ms
        self.last = a.attempted_at if self.last is None else max(self.last, a.attempted_at)

    def progress(self, **ids: str) -> dict[str, object]:
        return {
            "attempts": self.attempts,
            "correct": self.correct,
            "accuracy": self.correct / self.attempts,
            "score": self.score,
            "hints_used": self.hints,
            "avg_time_seconds": self.time_ms / 1000 / self.attempts,
            **ids,
        }


def rankings(attempts: list[Attempt]) -> list[Ranking]:
    per_user: dict[str, _Tally] = defaultdict(_Tally)
    for a in attempts:
        per_user[a.user_id].add(a)
    names = {p.user_id: p.name for p in PROFILES}
    ordered = sorted(
        per_user.items(), key=lambda kv: (-kv[1].score, -kv[1].correct / kv[1].attempts, kv[0])
    )
    return [
        Ranking(
            rank=1 + sum(other.score > tally.score for other in per_user.values()),
            user_id=user_id,
            display_name=names[user_id],
            score=tally.score,
            accuracy=tally.correct / tally.attempts,
            attempts=tally.attempts,
        )
        for user_id, tally in ordered
    ]


def derive(conn: psycopg.Connection, school: School) -> None:
    """Write what reporting-worker would: materialized_stats, leaderboards, progress_summary."""
    every = school.attempts
    level_of = {topic_id: level_id for topic_id, (_, level_id) in TOPICS.items()}
    for group_id in GROUPS:
        in_group = [a for a in every if a.group_id == group_id]
        if not in_group:
            continue
        builders.make_stat(conn, "group", group_id, metrics(in_group))
        builders.make_leaderboard(conn, "group", group_id, rankings(in_group))
        for level_id in LEVELS:
            rows = [a for a in in_group if level_of[a.topic_id] == level_id]
            if rows:
                builders.make_stat(conn, "group_level", f"{group_id}:{level_id}", metrics(rows))
        for topic_id in TOPICS:
            rows = [a for a in in_group if a.topic_id == topic_id]
            if rows:
                builders.make_stat(conn, "group_topic", f"{group_id}:{topic_id}", metrics(rows))
    for level_id in LEVELS:
        rows = [a for a in every if level_of[a.topic_id] == level_id]
        builders.make_stat(conn, "level", level_id, metrics(rows))
        builders.make_leaderboard(conn, "level", level_id, rankings(rows))
    for topic_id in TOPICS:
        builders.make_stat(conn, "topic", topic_id, metrics(school.attempts_of(topic_id=topic_id)))
    builders.make_leaderboard(conn, "global", "global", rankings(every))

    for profile in PROFILES:
        mine = school.attempts_of(user_id=profile.user_id)
        if not mine:
            continue
        totals = _Tally()
        levels: defaultdict[str, _Tally] = defaultdict(_Tally)
        topics: defaultdict[str, _Tally] = defaultdict(_Tally)
        for a in mine:
            totals.add(a)
            levels[level_of[a.topic_id]].add(a)
            topics[a.topic_id].add(a)
        builders.make_progress(
            conn,
            profile.user_id,
            totals=totals.progress(),
            levels=[tally.progress(level_id=lid) for lid, tally in sorted(levels.items())],
            topics=[
                tally.progress(topic_id=tid, level_id=level_of[tid])
                for tid, tally in sorted(topics.items())
            ],
            last_activity_at=totals.last,
        )


def notify_changed(conn: psycopg.Connection, group_ids: list[str]) -> None:
    """Tell the API's stats cache what the worker would tell it after a tick."""
    import json

    conn.execute("SELECT pg_notify('stats_changed', %s)", (json.dumps({"group_ids": group_ids}),))
