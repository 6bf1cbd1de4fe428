"""The export rate limit: exact under real concurrency, a rolling hour, refusals not counted."""

import asyncio
import json

import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.exports.conftest import GROUP, SEPTEMBER, Deployment, School, rows_of

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

BODY = {"topic_ids": [], "period": SEPTEMBER, "format": "csv"}


def _limited_total() -> float:
    return REGISTRY.get_sample_value("exports_rate_limited_total") or 0.0


async def test_fifty_simultaneous_requests_accept_exactly_five(
    deployment: Deployment, school: School
) -> None:
    teacher = deployment.teacher(sub="busy-teacher")
    before = _limited_total()
    responses = await asyncio.gather(*(deployment.request(teacher, BODY) for _ in range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 5 and statuses.count(429) == 45
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["status"] == 429
        assert 3590 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-limit"] == "5"
    assert _limited_total() - before == 45
    stored = rows_of(
        deployment.url, "SELECT count(*) FROM report_exports WHERE requested_by = 'busy-teacher'"
    )
    assert stored[0][0] == 5
    # Another teacher is not affected.
    other = await deployment.request(deployment.teacher(sub="calm-teacher"), BODY)
    assert other.status_code == 202
    assert other.headers["ratelimit-remaining"] == "4"


def _backdate(url: str, sub: str, minutes: list[int]) -> None:
    """Requests of `sub` made that many minutes ago (as the API would have stored them)."""
    scope = json.dumps({"role": "teacher", "sub": sub, "group_ids": [GROUP]})
    with psycopg.connect(url) as conn:
        for ago in minutes:
            conn.execute(
                "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters,"
                " format, status, created_at) VALUES (%s, %s, %s, %s, 'csv', 'failed',"
                " now() - make_interval(mins => %s))",
                (sub, scope, GROUP, json.dumps({"topic_ids": [], "period": SEPTEMBER}), ago),
            )


async def test_the_window_rolls_and_retry_after_says_when_a_slot_frees(
    deployment: Deployment, school: School
) -> None:
    _backdate(deployment.url, "rolling", [61, 59, 30, 20, 10, 5])  # 5 inside the hour
    teacher = deployment.teacher(sub="rolling")
    refused = await deployment.request(teacher, BODY)
    assert refused.status_code == 429
    # The oldest counted request (59 min ago) leaves the window in about 60 s.
    assert 55 <= int(refused.headers["retry-after"]) <= 61
    assert refused.headers["ratelimit-reset"] == refused.headers["retry-after"]

    # Once it has left, exactly one slot is free again: the refusal above was not counted.
    with psycopg.connect(deployment.url) as conn:
        conn.execute(
            "UPDATE report_exports SET created_at = created_at - interval '2 minutes'"
            " WHERE requested_by = 'rolling'"
        )
    accepted = await deployment.request(teacher, BODY)
    assert accepted.status_code == 202
    assert accepted.headers["ratelimit-remaining"] == "0"
    assert (await deployment.request(teacher, BODY)).status_code == 429
