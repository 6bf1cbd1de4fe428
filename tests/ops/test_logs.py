"""The API's logs are JSON lines, and a request that fails is logged with its request id.

A real `reporting serve` whose schema is broken under it (a derived table dropped): the next
stats request fails deep in the database, uvicorn logs the traceback, and that line must be
JSON and carry the id the client sent, so the operator can go from the client's X-Request-ID
to the traceback.

With REPORTING_LOG_JSON=false, a line of text still carries what the JSON line's fields say.
"""

from pathlib import Path

import httpx
import psycopg
import pytest

from tests.builders import make_group
from tests.conftest import TokenFactory
from tests.ops import processes
from tests.servers import free_port

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


def test_text_logs_keep_the_fields_that_say_why(fresh_db_url: str, tmp_path: Path) -> None:
    """REPORTING_LOG_JSON=false: a warning whose reason is a field still says it (the export
    worker's "object storage is not usable yet" said nothing more in text)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = processes.service_env(
        database_url=fresh_db_url,
        data_dir=tmp_path / "data",
        extra={
            "REPORTING_LOG_JSON": "false",
            "OBJECT_STORAGE_ENDPOINT": nowhere,
            "OBJECT_STORAGE_BUCKET": "reports",
            "OBJECT_STORAGE_ACCESS_KEY": "key",
            "OBJECT_STORAGE_SECRET_KEY": "secret",
        },
    )
    output = processes.run_once("export-worker", env, tmp_path)
    [line] = [x for x in output.splitlines() if "object storage is not usable yet" in x]
    assert " WARNING reporting.exports.worker: object storage is not usable yet error=" in line
    assert "bucket 'reports'" in line and nowhere in line and "Could not connect" in line, line
