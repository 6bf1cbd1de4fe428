"""The API's logs are JSON lines, and a request that fails is logged with its request id.

A real `reporting serve` whose schema is broken under it (a derived table dropped): the next
stats request fails deep in the database, uvicorn logs the traceback, and that line must be
JSON and carry the id the client sent, so the operator can go from the client's X-Request-ID
to the traceback.
"""

from pathlib import Path

import httpx
import psycopg
import pytest

from tests.builders import make_group
from tests.conftest import TokenFactory
from tests.ops import processes

pytestmark = pytest.mark.slow


def test_an_unhandled_error_is_one_json_line_with_the_request_id(
    fresh_db_url: str, make_token: TokenFactory, tmp_path: Path
) -> None:
    env = processes.service_env(database_url=fresh_db_url, data_dir=tmp_path / "data")
    api = processes.start_api(env, tmp_path)
    try:
        with psycopg.connect(fresh_db_url, autocommit=True) as conn:
            make_group(conn, "g1")
            conn.execute("DROP TABLE materialized_stats CASCADE")
        response = httpx.get(
            f"{api.url}/stats/groups/g1",
            headers={
                "Authorization": f"Bearer {make_token('admin')}",
                "X-Request-ID": "broken-schema-0001",
            },
            timeout=10,
        )
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "broken-schema-0001"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 500
        scrape = api.metrics()
        assert (
            scrape.value("http_requests_total", route="/stats/groups/{group_id}", status="500") == 1
        )
    finally:
        assert api.terminate() == 0

    records = api.log_records()  # every line is JSON
    errors = [r for r in records if r["level"] == "error"]
    assert errors, api.logs()
    assert all(r.get("request_id") == "broken-schema-0001" for r in errors), errors
    assert any("materialized_stats" in str(r.get("exc", "")) for r in errors), errors
