"""The ingestion tests' world: a database of their own (ingestion commits) and a small directory."""

from collections.abc import AsyncIterator
from typing import Any, LiteralString

import httpx
import psycopg
import pytest

from tests.conftest import TokenFactory, api_client, make_settings

DIRECTORY: dict[str, Any] = {
    "groups": [{"id": "g-7a", "name": "7А"}, {"id": "g-7b", "name": "7Б"}],
    "levels": [{"id": "lvl-1", "name": "Дроби", "position": 1}],
    "topics": [
        {"id": "t-add", "name": "Сложение дробей", "level_id": "lvl-1"},
        {"id": "t-mul", "name": "Умножение дробей", "level_id": "lvl-1"},
    ],
    "users": [
        {"id": "u-anna", "display_name": "Иванова Анна", "group_ids": ["g-7a"]},
        {"id": "u-petr", "display_name": "Петров Пётр", "group_ids": ["g-7a", "g-7b"]},
        {"id": "u-olga", "display_name": "Орлова Ольга", "group_ids": ["g-7b"]},
    ],
}


def attempt(event_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid attempt of the DIRECTORY school as the platform sends it."""
    return {
        "event_id": event_id,
        "user_id": "u-anna",
        "group_id": "g-7a",
        "topic_id": "t-add",
        "task_id": "task-1",
        "is_correct": True,
        "score": 8.5,
        "hints_used": 1,
        "time_spent_ms": 42_000,
        "attempted_at": "2026-09-01T10:00:00Z",
        **overrides,
    }


@pytest.fixture
async def ingest_api(fresh_db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_settings(fresh_db_url), fresh_db_url) as client:
        yield client


@pytest.fixture
def service_headers(make_token: TokenFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('service', sub='platform')}"}


@pytest.fixture
async def school(ingest_api: httpx.AsyncClient, service_headers: dict[str, str]) -> None:
    """DIRECTORY, ingested through the API."""
    response = await ingest_api.put("/ingest/directory", json=DIRECTORY, headers=service_headers)
    assert response.status_code == 200, response.text


def count(url: str, query: LiteralString = "SELECT count(*) FROM attempts") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
