"""REPORTING_ENABLE_LIVE_UPDATES end to end: the API and the analytics worker as OS processes.

Flag on: an attempt ingested through the API reaches the group's stats within 5 s (the hourly
schedule is far away) and an open SSE stream is told. Flag off: nothing changes until a tick.
"""

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from reporting.settings import WorkerSettings
from reporting.stats import events
from tests.conftest import TokenFactory, api_client, make_settings
from tests.ops import processes
from tests.ops.processes import ServiceProcess

GROUP = "g-live"
LAG_BUDGET_SECS = 5.0

DIRECTORY = {
    "groups": [{"id": GROUP, "name": "Живая группа"}, {"id": "g-other", "name": "Другая"}],
    "levels": [{"id": "L1", "name": "Первый", "position": 1}],
    "topics": [{"id": "T1", "name": "Дроби", "level_id": "L1"}],
    "users": [
        {"id": "u1", "display_name": "Анна", "group_ids": [GROUP]},
        {"id": "u2", "display_name": "Борис", "group_ids": ["g-other"]},
    ],
}


def attempt(event_id: str, user: str = "u1", group: str = GROUP) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "group_id": group,
        "topic_id": "T1",
        "task_id": "task-1",
        "is_correct": True,
        "score": 3.0,
        "hints_used": 0,
        "time_spent_ms": 4000,
        "attempted_at": datetime(2026, 11, 1, 9, 0, tzinfo=UTC).isoformat(),
    }


class Events:
    """An SSE stream read in a thread; `events` receives (event type, data) pairs."""

    def __init__(self, url: str, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.status: queue.Queue[int] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._read, args=(url, token), daemon=True)
        self._thread.start()

    def _read(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status.put(response.status_code)
                kind = "message"
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        self.events.put((kind, json.loads(line.split(":", 1)[1])))
                    elif not line:
                        kind = "message"
        except httpx.HTTPError:
            pass  # closed by close()

    def next_change(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            kind, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind == "stats_changed":
                return data

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, fresh_db_url: str, tmp_path: Path, make_token: TokenFactory
) -> Iterator[tuple[ServiceProcess, httpx.Client, httpx.Client, dict[str, str]]]:
    """The API, a school with one attempt, then the worker (flag from the test's parameter),
    whose first tick (a full one: no running sums yet) counts that attempt."""
    env = processes.service_env(
        database_url=fresh_db_url,
        data_dir=tmp_path / "data",
        extra={
            "REPORTING_ENABLE_LIVE_UPDATES": "true" if request.param else "false",
            "REPORTING_WORKER_INTERVAL_SECS": "3600",
        },
    )
    api = processes.start_api(env, tmp_path)
    worker = None
    service = httpx.Client(
        base_url=api.url,
        headers={"Authorization": f"Bearer {make_token('service', sub='platform')}"},
        timeout=10,
    )
    teacher = httpx.Client(
        base_url=api.url,
        headers={"Authorization": f"Bearer {make_token('teacher', groups=[GROUP])}"},
        timeout=10,
    )
    try:
        assert service.put("/ingest/directory", json=DIRECTORY).status_code == 200
        response = service.post("/ingest/attempts", json={"attempts": [attempt("e0")]})
        assert response.status_code == 200, response.text
        worker = processes.start_reporting_worker(env, tmp_path)
        wait_total(teacher, 1, timeout=30)
        yield api, service, teacher, env
    finally:
        service.close()
        teacher.close()
        if worker is not None:
            assert worker.terminate() == 0, worker.tail()
        assert api.terminate() == 0, api.tail()


def total_attempts(teacher: httpx.Client) -> int | None:
    response = teacher.get(f"/stats/groups/{GROUP}")
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    return None if stats is None else int(stats["metrics"]["total_attempts"])  # None: no tick yet


def wait_total(teacher: httpx.Client, want: int, timeout: float) -> float:
    started = time.monotonic()
    while (total := total_attempts(teacher)) != want:
        assert time.monotonic() - started < timeout, f"total_attempts {total}, want {want}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("stack", [True], indirect=True, ids=["live"])
def test_live_an_ingested_attempt_reaches_the_stats_and_the_stream_within_seconds(
    stack: tuple[ServiceProcess, httpx.Client, httpx.Client, dict[str, str]],
    make_token: TokenFactory,
) -> None:
    api, service, teacher, _ = stack
    token = make_token("teacher", groups=[GROUP])
    events = Events(f"{api.url}/stats/groups/{GROUP}/events", token)
    try:
        assert events.status.get(timeout=10) == 200
        for n in range(1, 4):
            started = time.monotonic()
            response = service.post("/ingest/attempts", json={"attempts": [attempt(f"e{n}")]})
            assert response.status_code == 200 and response.json()["inserted"] == 1
            wait_total(teacher, 1 + n, timeout=LAG_BUDGET_SECS)
            assert time.monotonic() - started <= LAG_BUDGET_SECS
            change = events.next_change(timeout=LAG_BUDGET_SECS)
            assert change["group_id"] == GROUP
        # Another group's attempt: that group's listeners only.
        other = service.post(
            "/ingest/attempts", json={"attempts": [attempt("x1", "u2", "g-other")]}
        )
        assert other.status_code == 200
        with pytest.raises(queue.Empty):
            events.next_change(timeout=2)
    finally:
        events.close()


def level_attempts(teacher: httpx.Client, level_id: str) -> int | None:
    response = teacher.get(f"/stats/levels/{level_id}")
    assert response.status_code == 200, response.text
    stats = response.json()["stats"]
    return None if stats is None else int(stats["metrics"]["total_attempts"])


@pytest.mark.parametrize("stack", [True], indirect=True, ids=["live"])
def test_live_a_directory_change_reaches_the_stats_within_seconds(
    stack: tuple[ServiceProcess, httpx.Client, httpx.Client, dict[str, str]],
) -> None:
    _, service, teacher, _ = stack
    # A live tick first: the worker's start-up wake-up is spent, and it is listening.
    response = service.post("/ingest/attempts", json={"attempts": [attempt("e1")]})
    assert response.status_code == 200
    wait_total(teacher, 2, timeout=LAG_BUDGET_SECS)
    # T1 (with the school's attempts) moves to a new level L2: L2 now counts them, L1 none.
    moved = {
        "levels": [{"id": "L2", "name": "Второй", "position": 2}],
        "topics": [{"id": "T1", "name": "Дроби", "level_id": "L2"}],
    }
    started = time.monotonic()
    assert service.put("/ingest/directory", json=moved).status_code == 200
    while (level_attempts(teacher, "L2"), level_attempts(teacher, "L1")) != (2, 0):
        assert time.monotonic() - started < LAG_BUDGET_SECS, (
            level_attempts(teacher, "L2"),
            level_attempts(teacher, "L1"),
        )
        time.sleep(0.05)


@pytest.mark.parametrize("stack", [False], indirect=True, ids=["off"])
def test_flag_off_nothing_changes_until_a_tick(
    stack: tuple[ServiceProcess, httpx.Client, httpx.Client, dict[str, str]], tmp_path: Path
) -> None:
    _, service, teacher, env = stack
    response = service.post("/ingest/attempts", json={"attempts": [attempt("late")]})
    assert response.status_code == 200 and response.json()["inserted"] == 1
    time.sleep(3)
    assert total_attempts(teacher) == 1
    assert teacher.get(f"/stats/groups/{GROUP}/events").status_code == 404
    processes.run_once("reporting-worker", env, tmp_path)  # the next tick, come early
    wait_total(teacher, 2, timeout=10)


async def test_the_api_says_so_while_no_worker_follows_ingestion(
    fresh_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Live updates on for the API, and a worker started without them: the numbers stayed
    still and the streams silent, and nothing said why."""
    monkeypatch.setattr(events, "LIVE_WORKER_FIRST_CHECK_SECS", 0.05)
    monkeypatch.setattr(events, "LIVE_WORKER_CHECK_SECS", 0.2)
    settings = make_settings(
        fresh_db_url, worker=WorkerSettings(REPORTING_ENABLE_LIVE_UPDATES=True)
    )
    caplog.set_level(logging.INFO, logger="reporting.stats.events")

    def said(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async with api_client(settings, fresh_db_url):
        await _eventually(lambda: said("no analytics worker follows ingestion"))
        env = processes.service_env(
            database_url=fresh_db_url,
            data_dir=tmp_path / "data",
            extra={"REPORTING_ENABLE_LIVE_UPDATES": "true"},
        )
        worker = processes.start_reporting_worker(env, tmp_path)
        try:
            await _eventually(lambda: said("an analytics worker follows ingestion again"))
        finally:
            assert worker.terminate() == 0


async def _eventually(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
