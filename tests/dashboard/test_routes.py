"""The dashboard's own HTTP surface, over real HTTP: the page, its static files and the three
reads it adds (groups, topics, students with attention flags)."""

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from reporting.auth.scope import Scope
from reporting.dashboard import assets, queries
from reporting.db.engine import Database
from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer
from tests.dashboard.school import FOREIGN_GROUP, FOREIGN_NAMES, GROUPS, TEACHER_GROUPS, School


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.base_url, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the page and its files ---------------------------------------------------------------------


def test_page_needs_no_token_and_loads_only_its_own_versioned_files(http: httpx.Client) -> None:
    response = http.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    version = assets.bundle().version
    urls = re.findall(r'(?:src|href)="([^"#][^"]*)"', response.text)
    assert urls and all(url.startswith(f"/dashboard/static/{version}/") for url in urls), urls
    assert '<html lang="ru">' in response.text


def test_static_files_cache_for_a_year_when_versioned_and_revalidate_otherwise(
    http: httpx.Client,
) -> None:
    version = assets.bundle().version
    versioned = http.get(f"/dashboard/static/{version}/app.js")
    assert versioned.status_code == 200
    assert versioned.headers["content-type"].startswith("text/javascript")
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert versioned.headers["content-encoding"] == "gzip"  # httpx asked for it and unpacked it
    assert "import" in versioned.text

    plain = http.get("/dashboard/static/style.css")
    assert plain.status_code == 200
    assert plain.headers["cache-control"] == "no-cache"
    etag = plain.headers["etag"]
    again = http.get("/dashboard/static/style.css", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""

    raw = http.get("/dashboard/static/style.css", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert raw.content == (assets.STATIC_DIR / "style.css").read_bytes()


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/static/style.css"])
@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [("gzip, br", True), ("*", True), ("gzip;q=0", False), ("identity", False), ("br", False)],
)
def test_the_page_and_its_files_are_gzipped_only_for_clients_that_take_gzip(
    http: httpx.Client, path: str, accept_encoding: str, compressed: bool
) -> None:
    response = http.get(path, headers={"Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == ("gzip" if compressed else None)
    assert "Accept-Encoding" in response.headers["vary"]


def test_a_static_file_revalidates_with_its_weak_or_listed_etag_only(http: httpx.Client) -> None:
    etag = http.get("/dashboard/static/style.css").headers["etag"]
    for matching in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = http.get("/dashboard/static/style.css", headers={"If-None-Match": matching})
        assert again.status_code == 304, matching
    longer = etag[:-1] + 'x"'
    assert (
        http.get("/dashboard/static/style.css", headers={"If-None-Match": longer}).status_code
        == 200
    )


@pytest.mark.parametrize(
    "path", ["nope.js", "../routes.py", "%2e%2e/routes.py", "x/../../routes.py", "templates"]
)
def test_unknown_or_escaping_static_paths_are_404(http: httpx.Client, path: str) -> None:
    response = http.get(f"/dashboard/static/{path}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_static_files_reference_no_other_server() -> None:
    # The SVG namespace is an identifier, not a request.
    allowed = {"http://www.w3.org/2000/svg"}
    for name, asset in assets.bundle().files.items():
        found = set(re.findall(rb"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s'\"`)]*", asset.body))
        assert {u.decode() for u in found} <= allowed, (name, found)


def test_demo_tokens_appear_only_in_demo_mode_and_cannot_break_out(
    live_server: LiveServer, http: httpx.Client
) -> None:
    assert (
        '<script type="application/json" id="demo-tokens">[]</script>'
        in http.get("/dashboard").text
    )
    app = live_server.app
    app.state.demo_tokens = [  # type: ignore[attr-defined]
        {"label": "Учитель </script><script>alert(1)</script>", "role": "teacher", "token": "a.b.c"}
    ]
    try:
        page = http.get("/dashboard").text
    finally:
        app.state.demo_tokens = []  # type: ignore[attr-defined]
    assert "</script><script>alert(1)" not in page
    assert "\\u003c/script\\u003e" in page
    assert '"token": "a.b.c"' in page


# --- GET /dashboard/api/groups ------------------------------------------------------------------


def test_teacher_lists_only_their_own_groups(
    http: httpx.Client, make_token: TokenFactory, school: School
) -> None:
    token = make_token("teacher", groups=[*TEACHER_GROUPS, "g-missing"])
    response = http.get("/dashboard/api/groups", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "groups": [{"id": g, "name": GROUPS[g]} for g in TEACHER_GROUPS],
        "truncated": False,
    }
    # A search cannot widen a teacher's list.
    searched = http.get("/dashboard/api/groups", params={"q": "9В"}, headers=bearer(token))
    assert searched.json()["groups"] == []


def test_admin_lists_every_group_searches_and_limits(
    http: httpx.Client, make_token: TokenFactory, school: School
) -> None:
    token = make_token("admin")
    everything = http.get("/dashboard/api/groups", headers=bearer(token)).json()
    assert [g["id"] for g in everything["groups"]] == ["g-a", "g-b", "g-x"]
    found = http.get("/dashboard/api/groups", params={"q": "9в"}, headers=bearer(token)).json()
    assert found["groups"] == [{"id": "g-x", "name": "9В класс"}]
    by_id = http.get("/dashboard/api/groups", params={"q": "g-b"}, headers=bearer(token)).json()
    assert [g["id"] for g in by_id["groups"]] == ["g-b"]
    # LIKE wildcards in the search are literal characters.
    assert (
        http.get("/dashboard/api/groups", params={"q": "%"}, headers=bearer(token)).json()["groups"]
        == []
    )
    limited = http.get("/dashboard/api/groups", params={"limit": 2}, headers=bearer(token)).json()
    assert len(limited["groups"]) == 2 and limited["truncated"] is True


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"q": "x" * 201}, "q")],
)
def test_bad_group_search_is_422_naming_the_parameter(
    http: httpx.Client, make_token: TokenFactory, params: dict[str, int | str], field: str
) -> None:
    response = http.get("/dashboard/api/groups", params=params, headers=bearer(make_token("admin")))
    assert response.status_code == 422
    assert [e["loc"][-1] for e in response.json()["errors"]] == [field]


def test_group_list_needs_a_reader_token(http: httpx.Client, make_token: TokenFactory) -> None:
    missing = http.get("/dashboard/api/groups")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    expired = http.get("/dashboard/api/groups", headers=bearer(make_token("admin", ttl=-10)))
    assert expired.status_code == 401
    service = http.get("/dashboard/api/groups", headers=bearer(make_token("service")))
    assert service.status_code == 403


def test_topic_catalogue_lists_levels_and_topics_in_order(
    http: httpx.Client, make_token: TokenFactory, school: School
) -> None:
    body = http.get(
        "/dashboard/api/topics", headers=bearer(make_token("teacher", groups=["g-a"]))
    ).json()
    assert [level["id"] for level in body["levels"]] == ["L1", "L2"]
    assert [(t["id"], t["level_id"]) for t in body["topics"]] == [
        ("T1", "L1"),
        ("T2", "L1"),
        ("T3", "L2"),
        ("T4", "L2"),
    ]
    assert body["topics"][0]["name"] == "Дроби"


# --- GET /dashboard/api/groups/{id}/students ----------------------------------------------------


def test_students_come_with_flags_relative_to_the_group(
    http: httpx.Client, make_token: TokenFactory, school: School
) -> None:
    token = make_token("teacher", groups=TEACHER_GROUPS)
    response = http.get("/dashboard/api/groups/g-a/students", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    reference = body["reference"]
    assert reference["active_students"] == 5
    assert reference["avg_accuracy"] == pytest.approx((0.9 + 0.8 + 0.3 + 0.7 + 0.8) / 5)
    # a4 uses 3 hints on every other attempt: 60 hints over the group's 200 attempts.
    assert reference["hints_per_attempt"] == pytest.approx(60 / 200)

    flags = {
        s["user_id"]: {(f["kind"], f["severity"]) for f in s["flags"]} for s in body["students"]
    }
    assert flags == {
        "a1": set(),
        "a2": set(),
        "a3": {("low_accuracy", "alert")},
        "a4": {("heavy_hints", "alert")},
        "a5": {("inactive", "warning")},
        "a6": {("inactive", "alert")},
    }
    order = [s["user_id"] for s in body["students"]]
    assert order[:3] == ["a3", "a4", "a6"]  # alerts first, by name
    assert order[3] == "a5" and set(order[4:]) == {"a1", "a2"}
    a3 = next(s for s in body["students"] if s["user_id"] == "a3")
    assert a3["attempts"] == 40 and a3["accuracy"] == pytest.approx(0.3)
    idle = next(s for s in body["students"] if s["user_id"] == "a5")["flags"][0]
    assert idle["value"] == pytest.approx(10, abs=0.5)
    assert body["computed_at"] is not None


def test_foreign_or_unknown_group_students_are_refused_without_a_leak(
    http: httpx.Client, make_token: TokenFactory, school: School
) -> None:
    teacher = bearer(make_token("teacher", groups=TEACHER_GROUPS))
    foreign = http.get(f"/dashboard/api/groups/{FOREIGN_GROUP}/students", headers=teacher)
    unknown = http.get("/dashboard/api/groups/no-such-group/students", headers=teacher)
    assert foreign.status_code == unknown.status_code == 403
    assert foreign.json()["detail"] == unknown.json()["detail"]
    assert not any(name in foreign.text for name in FOREIGN_NAMES)

    admin = bearer(make_token("admin"))
    assert (
        http.get("/dashboard/api/groups/no-such-group/students", headers=admin).status_code == 404
    )
    seen = http.get(f"/dashboard/api/groups/{FOREIGN_GROUP}/students", headers=admin).json()
    assert {s["display_name"] for s in seen["students"]} == set(FOREIGN_NAMES)
    service = bearer(make_token("service"))
    assert http.get("/dashboard/api/groups/g-a/students", headers=service).status_code == 403


def test_row_level_security_hides_foreign_members_even_without_the_scope_check(
    live_server: LiveServer, school: School
) -> None:
    """The members query run under a teacher's transaction for a foreign group: no rows."""

    async def check() -> None:
        db = Database(live_server.db_url, min_size=1, max_size=2)
        await db.open()
        try:
            teacher = Scope(role="teacher", sub="t-rls", group_ids=frozenset(TEACHER_GROUPS))
            async with db.scoped(teacher) as conn:
                assert await queries.group_members(conn, FOREIGN_GROUP) == []
                assert not await queries.group_exists(conn, FOREIGN_GROUP)
                own = await queries.group_members(conn, "g-a")
            assert {m.user_id for m in own} == {"a1", "a2", "a3", "a4", "a5", "a6"}
            admin = Scope(role="admin", sub="a-rls")
            async with db.scoped(admin) as conn:
                assert len(await queries.group_members(conn, FOREIGN_GROUP)) == 2
        finally:
            await db.close()

    # In a thread of its own: this package's Playwright owns the main thread's event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, check()).result(timeout=30)
