"""Every read route × admin/teacher/service × own/foreign/unknown id, with the exact status.

The teacher's token names group g-own only. "foreign" ids exist but belong to g-foreign; "unknown"
ids exist nowhere. A teacher gets the same 403 body for foreign and unknown tenant ids, so the
answer says nothing about existence.
"""

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.builders import (
    Ranking,
    make_group,
    make_leaderboard,
    make_level,
    make_progress,
    make_stat,
    make_topic,
    make_user,
)
from tests.conftest import TokenFactory, api_client, make_settings

ADMIN, TEACHER, SERVICE = "admin", "teacher", "service"
OWN, FOREIGN, UNKNOWN = "own", "foreign", "unknown"

# route template -> the id used for own / foreign / unknown
ROUTES: dict[str, dict[str, str]] = {
    "/stats/groups/{}": {OWN: "g-own", FOREIGN: "g-foreign", UNKNOWN: "g-nowhere"},
    "/stats/users/{}": {OWN: "u-own", FOREIGN: "u-foreign", UNKNOWN: "u-nowhere"},
    "/stats/topics/{}": {OWN: "t-own", FOREIGN: "t-foreign", UNKNOWN: "t-nowhere"},
    "/stats/levels/{}": {OWN: "l-own", FOREIGN: "l-foreign", UNKNOWN: "l-nowhere"},
    "/stats/leaderboards/group/{}": {OWN: "g-own", FOREIGN: "g-foreign", UNKNOWN: "g-nowhere"},
    "/stats/leaderboards/level/{}": {OWN: "l-own", FOREIGN: "l-foreign", UNKNOWN: "l-nowhere"},
    "/stats/leaderboards/global/{}": {OWN: "global", FOREIGN: "global", UNKNOWN: "nowhere"},
}

# Groups, users and group boards are tenant data: a teacher is refused outside their groups.
# Topics, levels and global/level boards are school-wide: a teacher opens any (filtered to their
# groups) and an unknown id is 404 for every reader. Service tokens never read stats.
TENANT = {"/stats/groups/{}", "/stats/users/{}", "/stats/leaderboards/group/{}"}


def expected_status(route: str, role: str, relation: str) -> int:
    if role == SERVICE:
        return 403
    if relation == UNKNOWN:
        return 403 if role == TEACHER and route in TENANT else 404
    if relation == FOREIGN and role == TEACHER and route in TENANT:
        return 403
    return 200


CASES = [
    pytest.param(route, role, relation, id=f"{route.split('/', 2)[2]}-{role}-{relation}")
    for route in ROUTES
    for role in (ADMIN, TEACHER, SERVICE)
    for relation in (OWN, FOREIGN, UNKNOWN)
]


def _school(conn: psycopg.Connection) -> None:
    make_group(conn, "g-own")
    make_group(conn, "g-foreign")
    make_level(conn, "l-own", position=1)
    make_level(conn, "l-foreign", position=2)
    make_topic(conn, "t-own", "l-own")
    make_topic(conn, "t-foreign", "l-foreign")
    make_user(conn, "u-own", ["g-own"])
    make_user(conn, "u-foreign", ["g-foreign"])
    for group, level, topic in (
        ("g-own", "l-own", "t-own"),
        ("g-foreign", "l-foreign", "t-foreign"),
    ):
        make_stat(conn, "group", group)
        make_stat(conn, "group_level", f"{group}:{level}")
        make_stat(conn, "group_topic", f"{group}:{topic}")
        make_stat(conn, "level", level)
        make_stat(conn, "topic", topic)
    make_progress(conn, "u-own")
    make_progress(conn, "u-foreign")
    own, foreign = Ranking(1, "u-own", "Own"), Ranking(1, "u-foreign", "Foreign")
    make_leaderboard(conn, "group", "g-own", [own])
    make_leaderboard(conn, "group", "g-foreign", [foreign])
    make_leaderboard(conn, "level", "l-own", [own])
    make_leaderboard(conn, "level", "l-foreign", [foreign])
    make_leaderboard(conn, "global", "global", [foreign, Ranking(2, "u-own", "Own")])
    # Present but expired: must read as absent.
    past = datetime.now(UTC) - timedelta(days=2)
    make_leaderboard(conn, "level", "l-nowhere", [own], computed_at=past)


@pytest.fixture(scope="module")
def school_url(module_db_url: str) -> Iterator[str]:
    with psycopg.connect(module_db_url) as conn:
        _school(conn)
    yield module_db_url


@pytest.fixture(scope="module")
async def client(school_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_settings(school_url), school_url) as api:
        yield api


def _token(make_token: TokenFactory, role: str) -> str:
    return make_token(role, groups=["g-own"] if role == TEACHER else [], sub=f"{role}-1")


@pytest.mark.parametrize(("route", "role", "relation"), CASES)
async def test_read_route_status(
    client: httpx.AsyncClient, make_token: TokenFactory, route: str, role: str, relation: str
) -> None:
    url = route.format(ROUTES[route][relation])
    headers = {"Authorization": f"Bearer {_token(make_token, role)}"}

    # twice: the second answer may come from the cache and must not differ
    statuses = [(await client.get(url, headers=headers)).status_code for _ in range(2)]

    expected = expected_status(route, role, relation)
    assert statuses == [expected, expected], url


@pytest.mark.parametrize("route", sorted(TENANT))
async def test_teacher_cannot_tell_foreign_from_unknown(
    client: httpx.AsyncClient, make_token: TokenFactory, route: str
) -> None:
    headers = {"Authorization": f"Bearer {_token(make_token, TEACHER)}"}

    foreign = await client.get(route.format(ROUTES[route][FOREIGN]), headers=headers)
    unknown = await client.get(route.format(ROUTES[route][UNKNOWN]), headers=headers)

    assert foreign.status_code == unknown.status_code == 403
    assert foreign.headers["content-type"] == unknown.headers["content-type"]
    assert foreign.headers["content-type"].startswith("application/problem+json")
    assert foreign.content == unknown.content


async def test_service_token_is_refused_with_a_problem(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = {"Authorization": f"Bearer {_token(make_token, SERVICE)}"}

    response = await client.get("/stats/groups/g-own", headers=headers)

    assert response.status_code == 403
    assert response.json()["detail"] == "This token's role may not read statistics."


async def test_teacher_reads_school_wide_entities_without_foreign_parts(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = {"Authorization": f"Bearer {_token(make_token, TEACHER)}"}

    topic = (await client.get("/stats/topics/t-foreign", headers=headers)).json()
    board = (await client.get("/stats/leaderboards/level/l-foreign", headers=headers)).json()
    everyone = (await client.get("/stats/leaderboards/global/global", headers=headers)).json()

    assert topic["stats"]["entity_id"] == "t-foreign"
    assert topic["groups"] == []
    assert board["rankings"] == []
    assert [r["user_id"] for r in everyone["rankings"]] == ["u-own"]
    assert everyone["rankings"][0]["rank"] == 2


@pytest.mark.parametrize("scope", ["school", "GROUP", "user"])
async def test_unknown_leaderboard_scope_is_422(
    client: httpx.AsyncClient, make_token: TokenFactory, scope: str
) -> None:
    headers = {"Authorization": f"Bearer {_token(make_token, ADMIN)}"}

    response = await client.get(f"/stats/leaderboards/{scope}/x", headers=headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "scope"]
