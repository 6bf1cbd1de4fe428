"""GET /stats/*: the answers' shapes (CONTRACT §5), orders, filtering, the cache and its
invalidation by NOTIFY stats_changed, ETags, and the cache's own rules."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from reporting.errors import NotFound
from reporting.stats import aggregate
from reporting.stats.cache import (
    BACKGROUND_REFRESH_LIMIT,
    BIG_CHANGE_PAGES,
    FRESH_FILL_LIMIT,
    LISTENER_APPLICATION_NAME,
    CachedBody,
    Filled,
    ResponseCache,
    changed_groups,
    etag_of,
)
from reporting.stats.schemas import GroupStatsRead
from tests.builders import (
    Attempt,
    Ranking,
    make_attempts,
    make_group,
    make_leaderboard,
    make_level,
    make_progress,
    make_stat,
    make_topic,
    make_user,
    progress,
    stat_metrics,
)
from tests.conftest import TokenFactory, api_client, make_settings
from tests.kpis import METRIC_KEYS

STAT_KEYS = {"type", "entity_id", "metrics", "computed_at"}
BOARD_KEYS = {"scope", "scope_id", "rankings", "computed_at", "expires_at"}
RANKING_KEYS = {"rank", "user_id", "display_name", "score", "accuracy", "attempts"}
PROGRESS_KEYS = {"attempts", "correct", "accuracy", "score", "hints_used", "avg_time_seconds"}
COMPUTED_AT = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def _school(conn: psycopg.Connection) -> None:
    """g1 and g2; levels whose id order is not their position order; topics named out of id order."""
    make_group(conn, "g1", "Группа 1")
    make_group(conn, "g2", "Группа 2")
    make_group(conn, "g-empty", "Без статистики")
    make_level(conn, "l-a", position=2, name="Второй")
    make_level(conn, "l-b", position=1, name="Первый")
    make_topic(conn, "t1", "l-a", "Алгебра")
    make_topic(conn, "t2", "l-b", "Числа")
    make_topic(conn, "t3", "l-b", "Буквы")
    make_user(conn, "u1", ["g1"], "Анна")
    make_user(conn, "u2", ["g2"], "Борис")
    make_user(conn, "u3", ["g1", "g2"], "Вера")
    make_stat(conn, "group", "g1", stat_metrics(total_attempts=30), computed_at=COMPUTED_AT)
    make_stat(conn, "group", "g2", stat_metrics(total_attempts=20), computed_at=COMPUTED_AT)
    for level in ("l-a", "l-b"):
        make_stat(conn, "level", level)
        make_stat(conn, "group_level", f"g1:{level}")
    make_stat(conn, "group_level", "g2:l-b", stat_metrics(total_attempts=7))
    for topic in ("t1", "t2", "t3"):
        make_stat(conn, "topic", topic, stat_metrics(total_attempts=50))
        make_stat(conn, "group_topic", f"g1:{topic}", stat_metrics(total_attempts=5))
    make_stat(conn, "group_topic", "g2:t2", stat_metrics(total_attempts=6))
    anna, boris, vera = (
        Ranking(1, "u3", "Вера", 9.0, 0.9, 10),
        Ranking(2, "u2", "Борис", 8.0, 0.8, 10),
        Ranking(3, "u1", "Анна", 7.0, 0.7, 10),
    )
    make_leaderboard(conn, "group", "g1", [anna, vera], computed_at=datetime.now(UTC))
    make_leaderboard(conn, "global", "global", [anna, boris, vera])
    make_leaderboard(conn, "level", "l-b", [anna, boris, vera])
    make_leaderboard(
        conn, "group", "g2", [boris], computed_at=datetime.now(UTC) - timedelta(hours=25)
    )
    make_progress(
        conn,
        "u3",
        totals=progress(8, 6),
        levels=[progress(8, 6, level_id="l-b")],
        topics=[
            progress(5, 4, topic_id="t2", level_id="l-b"),
            progress(3, 2, topic_id="t3", level_id="l-b"),
        ],
        last_activity_at=COMPUTED_AT,
        computed_at=COMPUTED_AT,
    )


@pytest.fixture(scope="module")
def school_url(module_db_url: str) -> Iterator[str]:
    with psycopg.connect(module_db_url) as conn:
        _school(conn)
    yield module_db_url


@pytest.fixture(scope="module")
async def client(school_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_settings(school_url), school_url) as api:
        yield api


def _auth(make_token: TokenFactory, role: str, groups: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(role, groups=groups)}"}


# --- shapes and orders --------------------------------------------------------------------------


async def test_group_answer_has_the_contract_shape_and_orders(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    response = await client.get("/stats/groups/g1", headers=_auth(make_token, "teacher", ["g1"]))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"group_id", "name", "stats", "leaderboard", "levels", "topics"}
    assert (body["group_id"], body["name"]) == ("g1", "Группа 1")
    assert set(body["stats"]) == STAT_KEYS
    assert body["stats"]["type"] == "group"
    assert body["stats"]["entity_id"] == "g1"
    assert body["stats"]["computed_at"] == "2026-10-01T12:00:00Z"
    assert body["stats"]["metrics"] == stat_metrics(total_attempts=30)
    assert set(body["leaderboard"]) == BOARD_KEYS
    assert [r["user_id"] for r in body["leaderboard"]["rankings"]] == ["u3", "u1"]
    assert all(set(r) == RANKING_KEYS for r in body["leaderboard"]["rankings"])
    # levels by position; topics by their level's position, then name
    assert [lv["level_id"] for lv in body["levels"]] == ["l-b", "l-a"]
    assert all(set(lv) == {"level_id", "name", "metrics"} for lv in body["levels"])
    assert [(t["topic_id"], t["name"]) for t in body["topics"]] == [
        ("t3", "Буквы"),
        ("t2", "Числа"),
        ("t1", "Алгебра"),
    ]
    assert all(set(t) == {"topic_id", "name", "level_id", "metrics"} for t in body["topics"])
    assert all(set(t["metrics"]) == METRIC_KEYS for t in body["topics"])
    assert all(set(lv["metrics"]) == METRIC_KEYS for lv in body["levels"])
    assert all(set(lv["metrics"]) == METRIC_KEYS for lv in body["levels"])
    assert body["topics"][0]["metrics"]["total_attempts"] == 5
    # The lists are spliced in as PostgreSQL built them: the whole page still is the model.
    page = GroupStatsRead.model_validate_json(response.content)
    assert page.model_dump(mode="json") == body
    # The lists are spliced in as PostgreSQL built them: the whole page still is the model.
    page = GroupStatsRead.model_validate_json(response.content)
    assert page.model_dump(mode="json") == body


async def test_group_without_numbers_yet_has_nulls_and_empty_lists(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    response = await client.get("/stats/groups/g-empty", headers=_auth(make_token, "admin"))

    assert response.status_code == 200
    assert response.json() == {
        "group_id": "g-empty",
        "name": "Без статистики",
        "stats": None,
        "leaderboard": None,
        "levels": [],
        "topics": [],
    }


async def test_expired_group_leaderboard_is_never_served(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = _auth(make_token, "admin")

    page = await client.get("/stats/groups/g2", headers=headers)
    board = await client.get("/stats/leaderboards/group/g2", headers=headers)

    assert page.status_code == 200
    assert page.json()["leaderboard"] is None
    assert page.json()["stats"]["metrics"]["total_attempts"] == 20
    assert board.status_code == 404


async def test_user_answer_shows_only_the_teachers_groups(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    teacher = await client.get("/stats/users/u3", headers=_auth(make_token, "teacher", ["g2"]))
    admin = await client.get("/stats/users/u3", headers=_auth(make_token, "admin"))

    assert teacher.status_code == admin.status_code == 200
    body = teacher.json()
    assert set(body) == {
        "user_id",
        "display_name",
        "group_ids",
        "totals",
        "levels",
        "topics",
        "last_activity_at",
        "computed_at",
    }
    assert body["group_ids"] == ["g2"]
    assert admin.json()["group_ids"] == ["g1", "g2"]
    assert body["display_name"] == "Вера"
    assert set(body["totals"]) == PROGRESS_KEYS
    assert body["totals"]["attempts"] == 8
    assert body["levels"] == [progress(8, 6, level_id="l-b")]
    assert [t["topic_id"] for t in body["topics"]] == ["t2", "t3"]
    assert set(body["topics"][0]) == PROGRESS_KEYS | {"topic_id", "level_id"}
    assert body["last_activity_at"] == "2026-10-01T12:00:00Z"


async def test_user_without_progress_has_empty_summary(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    response = await client.get("/stats/users/u1", headers=_auth(make_token, "teacher", ["g1"]))

    assert response.status_code == 200
    body = response.json()
    assert (body["totals"], body["levels"], body["topics"]) == (None, [], [])
    assert (body["last_activity_at"], body["computed_at"]) == (None, None)


async def test_topic_and_level_answers_list_only_the_callers_groups(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    teacher = _auth(make_token, "teacher", ["g2"])
    admin = _auth(make_token, "admin")

    topic = (await client.get("/stats/topics/t2", headers=teacher)).json()
    topic_all = (await client.get("/stats/topics/t2", headers=admin)).json()
    level = (await client.get("/stats/levels/l-b", headers=teacher)).json()
    level_all = (await client.get("/stats/levels/l-b", headers=admin)).json()

    assert set(topic) == {"topic_id", "name", "level_id", "stats", "groups"}
    assert (topic["topic_id"], topic["name"], topic["level_id"]) == ("t2", "Числа", "l-b")
    assert topic["stats"]["metrics"]["total_attempts"] == 50
    assert topic["groups"] == [{"group_id": "g2", "metrics": stat_metrics(total_attempts=6)}]
    assert [g["group_id"] for g in topic_all["groups"]] == ["g1", "g2"]
    assert set(level) == {"level_id", "name", "stats", "groups"}
    assert level["stats"]["type"] == "level"
    assert level["groups"] == [{"group_id": "g2", "metrics": stat_metrics(total_attempts=7)}]
    assert [g["group_id"] for g in level_all["groups"]] == ["g1", "g2"]


async def test_teacher_sees_own_learners_of_a_level_board_with_their_real_ranks(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    teacher = await client.get(
        "/stats/leaderboards/level/l-b", headers=_auth(make_token, "teacher", ["g1"])
    )
    admin = await client.get("/stats/leaderboards/level/l-b", headers=_auth(make_token, "admin"))

    assert teacher.status_code == 200
    assert set(teacher.json()) == BOARD_KEYS
    assert [(r["rank"], r["user_id"]) for r in teacher.json()["rankings"]] == [(1, "u3"), (3, "u1")]
    assert [r["user_id"] for r in admin.json()["rankings"]] == ["u3", "u2", "u1"]
    assert teacher.json()["rankings"][0] == {
        "rank": 1,
        "user_id": "u3",
        "display_name": "Вера",
        "score": 9.0,
        "accuracy": 0.9,
        "attempts": 10,
    }


async def test_openapi_declares_the_response_models(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    expected = {
        "/stats/groups/{group_id}": "GroupStatsRead",
        "/stats/users/{user_id}": "UserStatsRead",
        "/stats/topics/{topic_id}": "TopicStatsRead",
        "/stats/levels/{level_id}": "LevelStatsRead",
        "/stats/leaderboards/{scope}/{scope_id}": "LeaderboardRead",
    }
    for path, model in expected.items():
        ok = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{model}"}, path
        assert {"401", "403", "404"} <= set(paths[path]["get"]["responses"])


async def test_etag_revalidation_answers_304(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = _auth(make_token, "admin")

    first = await client.get("/stats/groups/g1", headers=headers)
    again = await client.get(
        "/stats/groups/g1", headers={**headers, "If-None-Match": first.headers["etag"]}
    )
    other = await client.get("/stats/groups/g1", headers={**headers, "If-None-Match": '"stale"'})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert other.status_code == 200
    assert other.content == first.content


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("identity", False),
        ("gzip;q=0", False),
        ("deflate", False),
    ],
)
async def test_pages_are_served_precompressed_to_clients_that_take_gzip(
    client: httpx.AsyncClient, make_token: TokenFactory, accept_encoding: str, compressed: bool
) -> None:
    headers = _auth(make_token, "admin")
    plain = await client.get("/stats/groups/g1", headers={**headers, "Accept-Encoding": "identity"})

    response = await client.get(
        "/stats/groups/g1", headers={**headers, "Accept-Encoding": accept_encoding}
    )

    assert response.status_code == 200
    assert response.headers.get("content-encoding") == ("gzip" if compressed else None)
    assert response.content == plain.content  # httpx decodes gzip
    assert (response.headers["etag"] != plain.headers["etag"]) is compressed
    assert "Accept-Encoding" in response.headers["vary"]
    if compressed:
        assert int(response.headers["content-length"]) < len(plain.content) / 2


async def test_either_etag_of_a_page_revalidates_it(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    headers = _auth(make_token, "admin")
    plain = await client.get("/stats/groups/g1", headers={**headers, "Accept-Encoding": "identity"})

    again = await client.get(
        "/stats/groups/g1",
        headers={**headers, "Accept-Encoding": "gzip", "If-None-Match": plain.headers["etag"]},
    )

    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/stats/groups/g1%00",
        "/stats/users/u1%00",
        "/stats/topics/t1%00",
        "/stats/levels/l1%00",
        "/stats/leaderboards/level/l1%00",
        "/stats/leaderboards/global/x%00",
        "/dashboard/api/groups/g1%00/students",
    ],
)
@pytest.mark.parametrize("role", ["admin", "teacher"])
async def test_an_id_with_a_nul_character_is_a_bad_request_not_a_server_error(
    client: httpx.AsyncClient, make_token: TokenFactory, path: str, role: str
) -> None:
    response = await client.get(path, headers=_auth(make_token, role, groups=["g1"]))

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "NUL" in response.json()["errors"][0]["msg"]
    # Without a token it is still the token that is missing.
    assert (await client.get(path)).status_code == 401


# --- invalidation -------------------------------------------------------------------------------


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


def _set_attempts(url: str, group_id: str, total: int, notify: str | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE materialized_stats SET metrics = jsonb_set(metrics, '{total_attempts}', %s::jsonb)"
            " WHERE type = 'group' AND entity_id = %s",
            (str(total), group_id),
        )
        if notify is not None:
            conn.execute("SELECT pg_notify('stats_changed', %s)", (notify,))


@pytest.fixture
async def live(fresh_db_url: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A school of its own (these tests change it) and an app over it."""
    with psycopg.connect(fresh_db_url) as conn:
        _school(conn)
    async with api_client(make_settings(fresh_db_url), fresh_db_url) as api:
        yield fresh_db_url, api


async def test_notify_stats_changed_serves_the_new_numbers(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "teacher", ["g1", "g2"])

    async def attempts(group_id: str) -> int:
        response = await client.get(f"/stats/groups/{group_id}", headers=headers)
        return int(response.json()["stats"]["metrics"]["total_attempts"])

    assert (await attempts("g1"), await attempts("g2")) == (30, 20)
    _set_attempts(url, "g1", 31)
    _set_attempts(url, "g2", 21)
    assert (await attempts("g1"), await attempts("g2")) == (30, 20), "served from the cache"

    _set_attempts(url, "g2", 22, notify='{"tick_id": 7, "group_ids": ["g2"]}')
    assert await _until(lambda: _equals(attempts("g2"), 22))
    assert await attempts("g1") == 30, "a notification naming g2 leaves g1 cached"

    _set_attempts(url, "g1", 32, notify='{"tick_id": 8, "group_ids": null}')
    assert await _until(lambda: _equals(attempts("g1"), 32))


async def test_no_cache_gets_a_changed_page_refilled_even_while_the_cache_is_busy(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "admin")

    async def attempts(group_id: str, **extra: str) -> int:
        response = await client.get(f"/stats/groups/{group_id}", headers={**headers, **extra})
        assert response.status_code == 200
        return int(response.json()["stats"]["metrics"]["total_attempts"])

    assert (await attempts("g1"), await attempts("g2")) == (30, 20)
    with psycopg.connect(url) as blocker:
        # Keep FRESH_FILL_LIMIT fills running (learners' pages wait for this lock): busy.
        blocker.execute("LOCK TABLE progress_summary IN ACCESS EXCLUSIVE MODE")
        busy = [
            asyncio.create_task(client.get(f"/stats/users/u{n}", headers=headers))
            for n in range(1, FRESH_FILL_LIMIT + 1)
        ]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in busy)
        _set_attempts(url, "g1", 31)
        _set_attempts(url, "g2", 21, notify='{"tick_id": 7, "group_ids": ["g1", "g2"]}')
        await asyncio.sleep(0.5)  # the app's listener takes the notification in

        # A dashboard told of the change asks with no-cache: refilled, not the old copy.
        assert await attempts("g1", **{"Cache-Control": "no-cache"}) == 31
        # A small change: any other reader gets the changed page refilled too, busy or not
        # (stale answers are for a change of more than BIG_CHANGE_PAGES pages).
        assert await attempts("g2") == 21
        blocker.rollback()
    assert {(await task).status_code for task in busy} <= {200, 404}


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_unreadable_notification_drops_everything(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "admin")
    first = await client.get("/stats/groups/g1", headers=headers)

    _set_attempts(url, "g1", 99, notify="not json")

    async def changed() -> bool:
        response = await client.get("/stats/groups/g1", headers=headers)
        return response.headers["etag"] != first.headers["etag"]

    assert await _until(changed)


async def test_listener_reconnects_and_starts_from_an_empty_cache(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "admin")

    async def attempts() -> int:
        response = await client.get("/stats/groups/g1", headers=headers)
        return int(response.json()["stats"]["metrics"]["total_attempts"])

    assert await attempts() == 30
    with psycopg.connect(url, autocommit=True) as conn:
        terminated = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (LISTENER_APPLICATION_NAME,),
        ).fetchone()
    assert terminated == (1,)

    # No notification: losing the connection alone must drop the old page.
    _set_attempts(url, "g1", 41)
    assert await _until(lambda: _equals(attempts(), 41))

    async def cached_again() -> bool:
        before = await attempts()
        _set_attempts(url, "g1", before + 1)
        return await attempts() == before

    assert await _until(cached_again), "the listener came back and the cache is on again"
    _set_attempts(url, "g1", 500, notify='{"tick_id": 9, "group_ids": null}')
    assert await _until(lambda: _equals(attempts(), 500))


async def test_membership_is_checked_before_the_cache(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "teacher", ["g1"])
    assert (await client.get("/stats/users/u1", headers=headers)).status_code == 200

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM user_groups WHERE user_key = (SELECT key FROM users WHERE id = 'u1')"
        )

    assert (await client.get("/stats/users/u1", headers=headers)).status_code == 403


async def test_a_directory_change_drops_the_cached_answers_it_touches(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    """Without waiting for a tick: a learner moved out of a teacher's groups leaves the teacher's
    view of a board, a renamed group or learner drops its groups' pages and no others, a renamed
    topic drops every page; an upsert that changes nothing drops nothing."""
    url, client = live
    teacher = _auth(make_token, "teacher", ["g1"])
    admin = _auth(make_token, "admin")

    async def put(directory: dict[str, object]) -> None:
        headers = _auth(make_token, "service")
        response = await client.put("/ingest/directory", json=directory, headers=headers)
        assert response.status_code == 200, response.text

    async def board() -> list[str]:
        response = await client.get("/stats/leaderboards/level/l-b", headers=teacher)
        return [r["user_id"] for r in response.json()["rankings"]]

    async def page(group_id: str) -> tuple[str, int]:
        body = (await client.get(f"/stats/groups/{group_id}", headers=admin)).json()
        return str(body["name"]), int(body["stats"]["metrics"]["total_attempts"])

    assert (await board(), await page("g1"), await page("g2")) == (
        ["u3", "u1"],
        ("Группа 1", 30),
        ("Группа 2", 20),
    )
    # Changed behind the caches' back (no notification): what is still cached shows the old.
    _set_attempts(url, "g1", 31)
    _set_attempts(url, "g2", 21)

    await put({"users": [{"id": "u1", "display_name": "Анна", "group_ids": ["g1"]}]})
    await asyncio.sleep(0.3)
    assert (await page("g1"), await page("g2")) == (("Группа 1", 30), ("Группа 2", 20))

    await put({"users": [{"id": "u2", "display_name": "Борис Б.", "group_ids": ["g2"]}]})
    assert await _until(lambda: _equals(page("g2"), ("Группа 2", 21)))
    assert await page("g1") == ("Группа 1", 30), "only the renamed learner's group"

    moved = {
        "users": [{"id": "u1", "display_name": "Анна", "group_ids": ["g2"]}],
        "groups": [{"id": "g1", "name": "Группа 1А"}],
    }
    await put(moved)
    assert await _until(lambda: _equals(board(), ["u3"]))
    assert await page("g1") == ("Группа 1А", 31)
    assert await page("g2") == ("Группа 2", 21)  # cached again

    _set_attempts(url, "g2", 22)
    await put({"topics": [{"id": "t1", "name": "Алгебра и начала", "level_id": "l-a"}]})
    assert await _until(lambda: _equals(page("g2"), ("Группа 2", 22)))


async def test_a_board_is_not_served_from_the_cache_past_its_expiry(
    live: tuple[str, httpx.AsyncClient], make_token: TokenFactory
) -> None:
    url, client = live
    headers = _auth(make_token, "admin")
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    with psycopg.connect(url) as conn:
        make_leaderboard(conn, "level", "l-a", [Ranking(1, "u1", "Анна")], expires_at=expires_at)

    assert (await client.get("/stats/leaderboards/level/l-a", headers=headers)).status_code == 200
    await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.05)
    assert (await client.get("/stats/leaderboards/level/l-a", headers=headers)).status_code == 404


# --- the cache's own rules ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _filler(body: bytes, groups: frozenset[str] | None = None) -> Callable[[], Awaitable[Filled]]:
    async def fill() -> Filled:
        return Filled(body, groups)

    return fill


async def test_an_entry_past_its_ttl_is_served_once_more_while_it_refreshes() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=30, clock=clock)
    cache.activate()
    await cache.get_or_fill("k", _filler(b"old"))

    clock.now += 23  # under the jittered TTL (24 to 30 s)
    assert (await cache.get_or_fill("k", _filler(b"new"))).body == b"old"
    assert cache.refreshes == 0
    clock.now += 8
    assert (await cache.get_or_fill("k", _filler(b"new"))).body == b"old"
    assert cache.refreshes == 1
    await asyncio.sleep(0.01)  # the background refresh runs
    assert (await cache.get_or_fill("k", _filler(b"newer"))).body == b"new"


async def test_many_hits_on_a_stale_entry_start_one_refresh() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=30, clock=clock)
    cache.activate()
    await cache.get_or_fill("k", _filler(b"old"))
    clock.now += 31
    calls = 0

    async def counted() -> Filled:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return Filled(b"new", None)

    bodies = [(await cache.get_or_fill("k", counted)).body for _ in range(5)]
    await asyncio.sleep(0.05)

    assert bodies == [b"old"] * 5
    assert (calls, cache.refreshes) == (1, 1)
    assert cache.get("k") == CachedBody(b"new", etag_of(b"new"))


async def test_a_request_after_an_invalidation_does_not_join_an_older_fill() -> None:
    cache = ResponseCache()
    cache.activate()
    release = asyncio.Event()

    async def before() -> Filled:
        await release.wait()
        return Filled(b"before", frozenset({"g1"}))

    first = asyncio.create_task(cache.get_or_fill("k", before))
    await asyncio.sleep(0.01)
    cache.invalidate(["g1"])
    second = await cache.get_or_fill("k", _filler(b"after", frozenset({"g1"})))
    release.set()

    assert second.body == b"after"
    assert (await first).body == b"before"
    assert cache.get("k") == CachedBody(b"after", etag_of(b"after"))


async def test_a_failed_refresh_drops_the_entry() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=30, clock=clock)
    cache.activate()
    await cache.get_or_fill("k", _filler(b"old"))

    async def gone() -> Filled:
        raise NotFound("No such group.")

    clock.now += 31
    assert (await cache.get_or_fill("k", gone)).body == b"old"
    await asyncio.sleep(0.01)
    assert cache.get("k") is None
    with pytest.raises(NotFound):
        await cache.get_or_fill("k", gone)


async def test_an_entry_is_never_served_past_its_hard_deadline() -> None:
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=30, clock=clock)
    cache.activate()

    async def board() -> Filled:
        return Filled(b"board", None, max_age_seconds=5)

    await cache.get_or_fill("k", board)
    clock.now += 4.9
    assert cache.get("k") is not None
    clock.now += 0.2
    assert cache.get("k") is None


async def test_cache_invalidates_by_group_and_school_wide_entries_always() -> None:
    cache = ResponseCache()
    cache.activate()
    await cache.get_or_fill("g1", _filler(b"1", frozenset({"g1"})))
    await cache.get_or_fill("g2", _filler(b"2", frozenset({"g2"})))
    await cache.get_or_fill("school", _filler(b"s", None))

    assert cache.invalidate(["g2"]) == 2
    assert cache.get("g1") is not None
    assert cache.get("g2") is None and cache.get("school") is None
    assert cache.invalidate(None) == 3  # everything, the already invalidated included
    assert cache.get("g1") is None
    # Not busy: the next reader gets the page refilled, not the invalidated one.
    assert (await cache.get_or_fill("g1", _filler(b"1 new", frozenset({"g1"})))).body == b"1 new"
    assert cache.served_stale == 0


async def test_while_busy_refilling_an_invalidated_page_is_served_once_more() -> None:
    """A tick that changed every page (more than BIG_CHANGE_PAGES), under load: stale answers
    while a few refreshes run."""
    cache = ResponseCache()
    cache.activate()
    pages = BIG_CHANGE_PAGES + 10
    for n in range(pages):
        await cache.get_or_fill(n, _filler(b"old", None))
    cache.invalidate(None)
    release = asyncio.Event()
    started = 0

    async def slow_new() -> Filled:
        nonlocal started
        started += 1
        await release.wait()
        return Filled(b"new", None)

    first = [asyncio.create_task(cache.get_or_fill(n, slow_new)) for n in range(FRESH_FILL_LIMIT)]
    await asyncio.sleep(0.01)
    assert started == FRESH_FILL_LIMIT  # the first readers refill and wait

    later = [await cache.get_or_fill(n, slow_new) for n in range(FRESH_FILL_LIMIT, pages)]
    assert [c.body for c in later] == [b"old"] * len(later)  # answered at once, stale
    assert cache.served_stale == len(later)
    await asyncio.sleep(0.01)  # the background refreshes start
    assert started == FRESH_FILL_LIMIT + BACKGROUND_REFRESH_LIMIT  # bounded background work

    release.set()
    assert {(await t).body for t in first} == {b"new"}
    await asyncio.sleep(0.01)
    renewed = [cache.get(n) for n in range(pages)]
    assert sum(c is not None and c.body == b"new" for c in renewed) == (
        FRESH_FILL_LIMIT + BACKGROUND_REFRESH_LIMIT
    )


async def test_readers_asking_at_once_right_after_a_change_get_it_all() -> None:
    """Eight pages read at once after a tick changed them all (a client reading a group, its
    levels, topics and boards in parallel): each refilled, none stale (with one fill at a time,
    all but the first were answered as they were before the tick)."""
    readers = 8
    cache = ResponseCache()
    cache.activate()
    for n in range(readers):
        await cache.get_or_fill(n, _filler(b"old", None))
    cache.invalidate(None)

    async def new() -> Filled:
        await asyncio.sleep(0.01)
        return Filled(b"new", None)

    answers = await asyncio.gather(*(cache.get_or_fill(n, new) for n in range(readers)))
    assert [a.body for a in answers] == [b"new"] * readers
    assert cache.served_stale == 0


async def test_cache_stores_nothing_while_inactive_or_past_its_byte_budget() -> None:
    cache = ResponseCache(max_bytes=10)
    await cache.get_or_fill("a", _filler(b"12345"))
    assert len(cache) == 0, "inactive: no listener, no caching"

    cache.activate()
    await cache.get_or_fill("a", _filler(b"12345"))
    await cache.get_or_fill("b", _filler(b"12345"))
    cache.get("a")  # a is now the most recently used
    await cache.get_or_fill("c", _filler(b"12345"))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (
        True,
        None,
        True,
    )
    assert cache.size_bytes == 10
    await cache.get_or_fill("huge", _filler(b"x" * 11))
    assert cache.get("huge") is None


async def test_concurrent_misses_share_one_fill_and_its_error() -> None:
    cache = ResponseCache()
    cache.activate()
    calls = 0
    release = asyncio.Event()

    async def slow() -> Filled:
        nonlocal calls
        calls += 1
        await release.wait()
        return Filled(b"body", None)

    waiters = [asyncio.create_task(cache.get_or_fill("k", slow)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    assert {(await w).body for w in waiters} == {b"body"}
    assert calls == 1

    async def missing() -> Filled:
        await asyncio.sleep(0.01)
        raise NotFound("No such group.")

    failing = [asyncio.create_task(cache.get_or_fill("gone", missing)) for _ in range(3)]
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(r, NotFound) for r in results)
    assert cache.get("gone") is None


async def test_a_fill_overtaken_by_an_invalidation_is_not_stored() -> None:
    cache = ResponseCache()
    cache.activate()

    async def racing() -> Filled:
        cache.invalidate(["g1"])  # the worker finished a tick while we were reading
        return Filled(b"maybe stale", frozenset({"g1"}))

    assert (await cache.get_or_fill("k", racing)).body == b"maybe stale"
    assert cache.get("k") is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"tick_id": 1, "group_ids": null}', None),
        ('{"tick_id": 1, "group_ids": ["a", "b"]}', ["a", "b"]),
        ('{"tick_id": 1}', None),
        ('{"group_ids": [1]}', None),
        ("[]", None),
        ("", None),
    ],
)
def test_changed_groups_reads_the_payload_and_defaults_to_everything(
    payload: str, expected: list[str] | None
) -> None:
    assert changed_groups(payload) == expected


# --- through a real tick of reporting-worker --------------------------------------------------------


def _ticked_school(url: str) -> None:
    with psycopg.connect(url) as conn:
        make_group(conn, "ga", "Группа А")
        make_group(conn, "gb", "Группа Б")
        make_level(conn, "l1", position=1)
        make_topic(conn, "t1", "l1", "Дроби")
        make_topic(conn, "t2", "l1", "Векторы")
        make_user(conn, "a1", ["ga"], "Анна")
        make_user(conn, "a2", ["ga"], "Алексей")
        make_user(conn, "b1", ["gb"], "Борис")
        make_attempts(
            conn,
            [
                Attempt("a1", "ga", "t1", is_correct=True, score=1.0, time_spent_ms=1000),
                Attempt(
                    "a1", "ga", "t2", is_correct=False, score=0.5, hints_used=2, time_spent_ms=3000
                ),
                Attempt(
                    "a2", "ga", "t1", is_correct=True, score=2.0, hints_used=1, time_spent_ms=2000
                ),
            ],
        )


def _tick(url: str) -> None:
    with psycopg.connect(url) as conn:
        aggregate.tick(conn, make_settings(url))


async def test_answers_after_a_real_tick_carry_the_contracts_numbers(
    fresh_db_url: str, make_token: TokenFactory
) -> None:
    _ticked_school(fresh_db_url)
    _tick(fresh_db_url)
    teacher = _auth(make_token, "teacher", ["ga"])

    async with api_client(make_settings(fresh_db_url), fresh_db_url) as client:
        group = await client.get("/stats/groups/ga", headers=teacher)
        empty = await client.get("/stats/groups/gb", headers=_auth(make_token, "admin"))
        user = await client.get("/stats/users/a1", headers=teacher)
        topic = await client.get("/stats/topics/t1", headers=teacher)
        level = await client.get("/stats/levels/l1", headers=teacher)
        board = await client.get("/stats/leaderboards/global/global", headers=teacher)

    assert [r.status_code for r in (group, empty, user, topic, level, board)] == [200] * 6
    page = group.json()
    # a1: 2 attempts, 1 correct, score 1.5; a2: 1 attempt, 1 correct, score 2 (CONTRACT §2)
    assert page["stats"]["metrics"] == {
        "total_attempts": 3,
        "total_users": 2,
        "avg_accuracy": pytest.approx(0.75),
        "avg_score": pytest.approx(1.75),
        "hint_usage_rate": pytest.approx(2 / 3),
        "avg_hints": pytest.approx(1.0),
        "avg_time_seconds": pytest.approx(2.0),
    }
    assert [t["topic_id"] for t in page["topics"]] == ["t2", "t1"]  # by name: Векторы, Дроби
    assert [lv["level_id"] for lv in page["levels"]] == ["l1"]
    assert [(r["rank"], r["user_id"]) for r in page["leaderboard"]["rankings"]] == [
        (1, "a2"),
        (2, "a1"),
    ]
    assert empty.json()["stats"]["metrics"]["total_attempts"] == 0
    assert user.json()["totals"]["attempts"] == 2
    assert user.json()["group_ids"] == ["ga"]
    assert [g["group_id"] for g in topic.json()["groups"]] == ["ga"]
    assert topic.json()["stats"]["metrics"]["total_attempts"] == 2
    assert level.json()["stats"]["metrics"]["total_users"] == 2
    assert {r["user_id"] for r in board.json()["rankings"]} == {"a1", "a2"}


async def test_a_real_ticks_notification_refreshes_the_cached_page(
    fresh_db_url: str, make_token: TokenFactory
) -> None:
    _ticked_school(fresh_db_url)
    _tick(fresh_db_url)
    headers = _auth(make_token, "teacher", ["ga"])

    async with api_client(make_settings(fresh_db_url), fresh_db_url) as client:

        async def attempts() -> int:
            response = await client.get("/stats/groups/ga", headers=headers)
            return int(response.json()["stats"]["metrics"]["total_attempts"])

        assert await attempts() == 3
        with psycopg.connect(fresh_db_url) as conn:
            make_attempts(conn, [Attempt("a2", "ga", "t2")])
        assert await attempts() == 3, "no tick yet: the cached page stands"

        await asyncio.to_thread(_tick, fresh_db_url)

        assert await _until(lambda: _equals(attempts(), 4))
