"""CONTRACT §2's KPI table over one scope's raw attempts, in plain Python: the one reference the
stats, export, dashboard and end-to-end tests compare the service's numbers with.

Written from the contract's words, not from the SQL: group the scope's attempts by user, then
take the means. Sums of floats use math.fsum (exact), so a difference from the service is the
service's rounding, never the reference's.
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol


class AttemptLike(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def is_correct(self) -> bool: ...
    @property
    def score(self) -> float: ...
    @property
    def hints_used(self) -> int: ...
    @property
    def time_spent_ms(self) -> int: ...


METRIC_KEYS = frozenset(
    {
        "total_attempts",
        "total_users",
        "avg_accuracy",
        "avg_score",
        "hint_usage_rate",
        "avg_hints",
        "avg_time_seconds",
    }
)


def metrics(attempts: Sequence[AttemptLike]) -> dict[str, float]:
    """The KPIs of one scope's attempts; every one 0 for a scope without attempts."""
    if not attempts:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    per_user: dict[str, list[AttemptLike]] = defaultdict(list)
    for attempt in attempts:
        per_user[attempt.user_id].append(attempt)
    users = per_user.values()
    n = len(attempts)
    return {
        "total_attempts": n,
        "total_users": len(per_user),
        "avg_accuracy": math.fsum(sum(a.is_correct for a in mine) / len(mine) for mine in users)
        / len(per_user),
        "avg_score": math.fsum(math.fsum(a.score for a in mine) for mine in users) / len(per_user),
        "hint_usage_rate": sum(1 for a in attempts if a.hints_used > 0) / n,
        "avg_hints": sum(a.hints_used for a in attempts) / n,
        "avg_time_seconds": math.fsum(a.time_spent_ms / 1000 for a in attempts) / n,
    }
