"""The export routes: status codes, headers, validation (nothing created), who sees what."""

import re
import uuid
from typing import Any

import pytest

from tests.exports.conftest import GROUP, OTHER_GROUP, SEPTEMBER, Deployment, School, rows_of

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

VALID: dict[str, Any] = {"topic_ids": ["t-frac"], "period": SEPTEMBER, "format": "csv"}


def _count(deployment: Deployment) -> int:
    return int(rows_of(deployment.url, "SELECT count(*) FROM report_exports")[0][0])


async def test_a_request_is_accepted_with_location_and_rate_limit_headers(
    deployment: Deployment, school: School
) -> None:
    headers = deployment.teacher()
    response = await deployment.request(headers, {**VALID, "locale": "en"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert response.headers["location"] == f"/stats/exports/{body['id']}"
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "4"
    assert 3590 <= int(response.headers["ratelimit-reset"]) <= 3600
    assert body["group_id"] == GROUP and body["format"] == "csv" and body["locale"] == "en"
    assert body["filters"] == {"topic_ids": ["t-frac"], "period": SEPTEMBER}
    assert body["download_url"] is None and body["url_expires_at"] is None

    got = await deployment.api.get(response.headers["location"], headers=headers)
    assert got.status_code == 200
    assert got.json()["id"] == body["id"] and got.json()["status"] == "pending"
    assert got.headers["ratelimit-remaining"] == "4"
    # The requester's scope, request id and locale are stored for the worker.
    stored = rows_of(
        deployment.url,
        "SELECT requester_scope, request_id, locale FROM report_exports WHERE id = %s",
        body["id"],
    )[0]
    assert stored[0]["role"] == "teacher" and stored[0]["group_ids"] == [GROUP]
    assert stored[1] == response.headers["x-request-id"]
    assert stored[2] == "en"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"period": {"from": "2026-09-02", "to": "2026-09-01"}}, ["period"]),
        (
            {"period": {"from": "2026-09-01T10:00:00Z", "to": "2026-09-01T09:59:59Z"}},
            ["period"],
        ),
        ({"format": "docx"}, ["format"]),
        ({"topic_ids": ["t-frac", "t-nope"]}, ["topic_ids", 1]),
        ({"topic_ids": [f"t-{i}" for i in range(1001)]}, ["topic_ids"]),
        ({"period": {"from": "2026-02-30", "to": "2026-09-01"}}, ["period", "from"]),
        ({"period": {"from": "yesterday", "to": "2026-09-01"}}, ["period", "from"]),
        ({"period": {"from": 20260901, "to": "2026-09-01"}}, ["period", "from"]),
        ({"period": {"from": "2026-09-01"}}, ["period", "to"]),
        ({"period": None}, ["period"]),
        ({"locale": "de"}, ["locale"]),
        ({"notify": {"email": "not-an-address"}}, ["notify", "email"]),
        ({"colour": "red"}, ["colour"]),
    ],
)
async def test_a_bad_body_is_422_naming_the_field_and_creates_nothing(
    deployment: Deployment, school: School, change: dict[str, Any], where: list[Any]
) -> None:
    headers = deployment.teacher()
    response = await deployment.request(headers, {**VALID, **change})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422
    assert any(error["loc"][: len(where)] == where for error in problem["errors"]), problem
    assert _count(deployment) == 0
    # A refused request costs no quota.
    accepted = await deployment.request(headers, VALID)
    assert accepted.headers["ratelimit-remaining"] == "4"


async def test_who_may_request_an_export_of_which_group(
    deployment: Deployment, school: School
) -> None:
    teacher = deployment.teacher([GROUP])
    foreign = await deployment.request(teacher, VALID, OTHER_GROUP)
    unknown = await deployment.request(teacher, VALID, "g-nope")
    assert foreign.status_code == unknown.status_code == 403
    assert foreign.json() == unknown.json()  # no existence leak
    # Refused before the body is even looked at.
    assert (await deployment.request(teacher, {"format": "?"}, OTHER_GROUP)).status_code == 403
    service = {"Authorization": f"Bearer {deployment.tokens('service')}"}
    assert (await deployment.request(service, VALID)).status_code == 403
    assert (await deployment.request({}, VALID)).status_code == 401
    admin = deployment.admin()
    assert (await deployment.request(admin, VALID, "g-nope")).status_code == 404
    assert (await deployment.request(admin, VALID, OTHER_GROUP)).status_code == 202
    assert _count(deployment) == 1


async def test_refusals_carry_the_rate_limit_headers_too(
    deployment: Deployment, school: School
) -> None:
    """CONTRACT §5: "Export responses also carry RateLimit-Limit, RateLimit-Remaining and
    RateLimit-Reset": the refused ones (which cost nothing) as well."""
    teacher = deployment.teacher([GROUP])
    assert (await deployment.request(teacher, VALID)).status_code == 202
    refusals = [
        await deployment.request(teacher, {**VALID, "format": "doc"}),  # 422 (body)
        await deployment.request(teacher, {**VALID, "topic_ids": ["t-nope"]}),  # 422 (service)
        await deployment.request(teacher, VALID, OTHER_GROUP),  # 403
        await deployment.api.get(f"/stats/exports/{uuid.uuid4()}", headers=teacher),  # 403
    ]
    admin = deployment.admin()
    unknown = await deployment.api.get(f"/stats/exports/{uuid.uuid4()}", headers=admin)

    assert [r.status_code for r in refusals] == [422, 422, 403, 403]
    for response in refusals:
        assert response.headers["ratelimit-limit"] == "5", response.text
        assert response.headers["ratelimit-remaining"] == "4"
        assert 3590 <= int(response.headers["ratelimit-reset"]) <= 3600
    assert unknown.status_code == 404
    assert (unknown.headers["ratelimit-limit"], unknown.headers["ratelimit-remaining"]) == (
        "5",
        "5",
    )
    assert unknown.headers["ratelimit-reset"] == "0"
    assert (await deployment.request({}, VALID)).status_code == 401  # nobody to count for


async def test_a_body_that_is_not_json_is_refused_after_the_token_is_checked(
    deployment: Deployment, school: School
) -> None:
    """FastAPI decodes a JSON body before any dependency runs: without the export routes' own
    authentication first, a malformed body was a 422 without the quota, and without a token a
    422 instead of the 401 every protected route gives."""
    path = f"/stats/groups/{GROUP}/export"
    malformed = {"Content-Type": "application/json"}
    teacher = deployment.teacher([GROUP])

    refused = await deployment.api.post(path, content=b'{"format": ', headers=teacher | malformed)
    anonymous = await deployment.api.post(path, content=b'{"format": ', headers=malformed)

    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"][0]["type"] == "json_invalid"
    assert (refused.headers["ratelimit-limit"], refused.headers["ratelimit-remaining"]) == (
        "5",
        "5",
    )
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "ratelimit-limit" not in anonymous.headers
    assert _count(deployment) == 0


async def test_an_export_is_visible_to_its_requester_and_admins_only(
    deployment: Deployment, school: School
) -> None:
    owner = deployment.teacher([GROUP])
    colleague = deployment.teacher([GROUP])  # same group, another sub
    export = await deployment.produce(owner, VALID)
    assert export["status"] == "ready" and export["download_url"]
    location = f"/stats/exports/{export['id']}"

    refused = await deployment.api.get(location, headers=colleague)
    unknown = await deployment.api.get(f"/stats/exports/{uuid.uuid4()}", headers=colleague)
    garbage = await deployment.api.get("/stats/exports/not-a-uuid", headers=colleague)
    assert refused.status_code == unknown.status_code == garbage.status_code == 403
    assert refused.json() == unknown.json()
    listed = await deployment.api.get("/stats/exports", headers=colleague)
    assert listed.status_code == 200 and listed.json() == []

    admin = deployment.admin()
    seen = await deployment.api.get(location, headers=admin)
    assert seen.status_code == 200 and seen.json()["download_url"]
    assert (
        await deployment.api.get(f"/stats/exports/{uuid.uuid4()}", headers=admin)
    ).status_code == 404
    service = {"Authorization": f"Bearer {deployment.tokens('service')}"}
    assert (await deployment.api.get(location, headers=service)).status_code == 403


async def test_a_teacher_no_longer_sees_exports_of_a_group_that_is_no_longer_theirs(
    deployment: Deployment, school: School
) -> None:
    before = deployment.teacher([GROUP], sub="t-moved")
    export = await deployment.produce(before, VALID)
    location = f"/stats/exports/{export['id']}"
    after = deployment.teacher([OTHER_GROUP], sub="t-moved")  # the same teacher, moved

    refused = await deployment.api.get(location, headers=after)
    listed = await deployment.api.get("/stats/exports", headers=after)

    assert refused.status_code == 403
    assert "download_url" not in refused.text
    assert listed.status_code == 200 and listed.json() == []
    # The hourly quota is the teacher's, whatever groups the token names: that export counts.
    assert listed.headers["RateLimit-Remaining"] == "4"
    assert (await deployment.api.get(location, headers=before)).status_code == 200


async def test_the_list_is_an_array_newest_first_paged_by_the_link_header(
    deployment: Deployment, school: School
) -> None:
    teacher = deployment.teacher([GROUP, OTHER_GROUP])
    ids = []
    for group_id in (GROUP, OTHER_GROUP, GROUP, OTHER_GROUP):
        response = await deployment.request(teacher, VALID, group_id)
        assert response.status_code == 202
        ids.append(response.json()["id"])
    other = await deployment.request(deployment.teacher(), VALID)
    assert other.status_code == 202

    whole = await deployment.api.get("/stats/exports", headers=teacher)
    assert whole.status_code == 200
    assert [item["id"] for item in whole.json()] == ids[::-1]
    assert "link" not in whole.headers

    first = await deployment.api.get("/stats/exports?limit=3", headers=teacher)
    assert first.status_code == 200
    assert first.headers["ratelimit-remaining"] == "1"
    assert [item["id"] for item in first.json()] == ids[::-1][:3]
    next_page = re.fullmatch(r'<(/stats/exports\?[^>]+)>; rel="next"', first.headers["link"])
    assert next_page is not None
    second = await deployment.api.get(next_page.group(1), headers=teacher)
    assert [item["id"] for item in second.json()] == ids[:1]
    assert "link" not in second.headers

    everyone = await deployment.api.get("/stats/exports", headers=deployment.admin())
    assert {item["id"] for item in everyone.json()} == {*ids, other.json()["id"]}
    bad = await deployment.api.get("/stats/exports?cursor=xyz", headers=teacher)
    assert bad.status_code == 422
