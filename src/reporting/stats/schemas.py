"""The read models of GET /stats/* (CONTRACT §5), validated on the way out of the database.

Timestamps are always rendered in UTC, whatever the session's TimeZone.
"""

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

UtcDatetime = Annotated[datetime, AfterValidator(lambda value: value.astimezone(UTC))]
StatType = Literal["group", "level", "topic", "group_level", "group_topic"]
LeaderboardScope = Literal["global", "group", "level"]


class _Read(BaseModel):
    # Derived rows may carry more keys than the contract names: those are not served.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Metrics(_Read):
    """The KPIs of one scope (CONTRACT §2)."""

    total_attempts: int
    total_users: int
    avg_accuracy: float
    avg_score: float
    hint_usage_rate: float
    avg_hints: float
    avg_time_seconds: float


class StatRead(_Read):
    type: StatType
    entity_id: str
    metrics: Metrics
    computed_at: UtcDatetime


class RankingEntry(_Read):
    """`rank` = 1 + the learners of the scope with a strictly greater score (1, 2, 2, 4); order:
    score desc, accuracy desc, user_id asc. Scores are compared to 6 decimal places: totals of
    fractional scores added up in another order differ in a float's last bits, and tie."""

    rank: int
    user_id: str
    display_name: str
    score: float
    accuracy: float
    attempts: int


class LeaderboardRead(_Read):
    scope: LeaderboardScope
    scope_id: str
    rankings: list[RankingEntry]
    computed_at: UtcDatetime
    expires_at: UtcDatetime


class GroupLevelRead(_Read):
    level_id: str
    name: str
    metrics: Metrics


class GroupTopicRead(_Read):
    topic_id: str
    name: str
    level_id: str
    metrics: Metrics


class GroupStatsRead(_Read):
    """`stats` is null until the worker has computed the group; `leaderboard` while none is current."""

    group_id: str
    name: str
    stats: StatRead | None
    leaderboard: LeaderboardRead | None
    levels: list[GroupLevelRead]
    topics: list[GroupTopicRead]


class GroupMetricsRead(_Read):
    group_id: str
    metrics: Metrics


class TopicStatsRead(_Read):
    topic_id: str
    name: str
    level_id: str
    stats: StatRead | None
    groups: list[GroupMetricsRead]


class LevelStatsRead(_Read):
    level_id: str
    name: str
    stats: StatRead | None
    groups: list[GroupMetricsRead]


class Progress(_Read):
    attempts: int
    correct: int
    accuracy: float
    score: float
    hints_used: int
    avg_time_seconds: float


class LevelProgress(Progress):
    level_id: str


class TopicProgress(Progress):
    topic_id: str
    level_id: str


class UserStatsRead(_Read):
    """A learner's progress_summary. Without attempts: zero totals (accuracy 0), empty `levels`
    and `topics`, a null `last_activity_at`; `totals` and `computed_at` are null only until the
    worker's first tick since the learner joined the directory."""

    user_id: str
    display_name: str
    group_ids: list[str]
    totals: Progress | None
    levels: list[LevelProgress]
    topics: list[TopicProgress]
    last_activity_at: UtcDatetime | None
    computed_at: UtcDatetime | None
