import re
import time
from collections.abc import AsyncIterator

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from reporting.settings import Settings
from tests.conftest import TokenFactory, api_client


async def test_healthz_needs_no_token(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_current_schema(api: httpx.AsyncClient) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


async def test_readyz_names_a_schema_not_migrated_rather_than_an_unreachable_database(
    api: httpx.AsyncClient, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("DROP TABLE alembic_version")

    response = await api.get("/readyz")

    assert response.status_code == 503
    assert "run `reporting migrate`" in response.json()["detail"]


async def test_an_unreachable_database_is_a_quick_503_to_retry_not_a_long_wait(
    settings: Settings, fresh_db_url: str, server_url: str, make_token: TokenFactory
) -> None:
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    async with api_client(settings, fresh_db_url) as api:
        leaderboard = await api.get("/stats/leaderboards/global/global", headers=admin)
        assert leaderboard.status_code in (200, 404)
        with psycopg.connect(server_url, autocommit=True) as conn:
            name = str(conninfo_to_dict(fresh_db_url)["dbname"])
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

        for path in ("/stats/groups/g1", "/stats/exports"):
            started = time.monotonic()
            response = await api.get(path, headers=admin)
            assert time.monotonic() - started < 5, path  # the brief's bound for a call
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["retry-after"] == "5"
            assert response.json()["detail"] == "The database is unavailable; try again shortly."


async def test_metrics_exposes_request_counters_by_route_template(api: httpx.AsyncClient) -> None:
    await api.get("/healthz")
    body = (await api.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert "http_request_duration_seconds_bucket" in body


async def test_unknown_route_is_problem_json(api: httpx.AsyncClient) -> None:
    response = await api.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


async def test_fastapis_own_pages_are_counted_under_their_paths(api: httpx.AsyncClient) -> None:
    assert (await api.get("/openapi.json")).status_code == 200
    assert (await api.get("/docs")).status_code == 200
    assert (await api.get("/no-such-page")).status_code == 404
    body = (await api.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/openapi.json",status="200"}' in body
    assert 'http_requests_total{method="GET",route="/docs",status="200"}' in body
    assert 'http_requests_total{method="GET",route="unmatched",status="404"}' in body


async def test_the_api_docs_need_no_internet(api: httpx.AsyncClient) -> None:
    """Swagger UI and ReDoc come from this server, not a CDN (blank pages offline)."""
    for page in ("/docs", "/redoc"):
        html = (await api.get(page)).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs/static/") for a in assets), (page, assets)
        for asset in assets:
            response = await api.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset
        assert "cdn." not in html and "https://" not in html
    body = (await api.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/docs/static",status="200"}' in body


async def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(
    api: httpx.AsyncClient, make_token: TokenFactory, db_url: str
) -> None:
    """A teacher may only send small bodies (an export request); 80 MB were read whole before
    the 422, with or without a Content-Length. Nothing is created."""
    teacher = {"Authorization": f"Bearer {make_token('teacher', ['g1'])}"}
    filler = {"topic_ids": [], "format": "csv", "pad": "x" * (2 * 2**20)}
    sized = await api.post("/stats/groups/g1/export", json=filler, headers=teacher)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * 2**20

    streamed = await api.post(
        "/stats/groups/g1/export",
        content=chunks(),
        headers={**teacher, "Content-Type": "application/json"},
    )
    for response in (sized, streamed):
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["title"] == "Content Too Large"
        assert problem["detail"] == "The request body is too large: at most 1 MiB."
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM report_exports").fetchone() == (0,)


async def test_headers_over_the_limit_are_refused_before_the_token_is_read(
    api: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    """A 32 MB bearer token was decoded for seconds while every other request waited."""
    huge = {"Authorization": f"Bearer {make_token('admin')}.{'x' * 40_000}"}
    refused = await api.get("/stats/groups/g1", headers=huge)
    assert refused.status_code == 431
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == "The request's headers exceed 32 KiB."
    padded = await api.get("/healthz", headers={"X-Pad": "x" * 40_000})
    assert padded.status_code == 431
    # Ordinary headers, a long token included, pass.
    ok = await api.get("/healthz", headers={"X-Pad": "x" * 8_000})
    assert ok.status_code == 200
