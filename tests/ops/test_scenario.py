"""The whole stack, as separate OS processes, through one school's story.

PostgreSQL (a fresh database), an S3 endpoint (moto's server), an SMTP server (aiosmtpd), the
API (`reporting serve`) and both workers (`reporting-worker`, `export-worker`) started from
their console scripts with settings in the environment. Then:

1. the platform ingests a school (`PUT /ingest/directory`, `POST /ingest/attempts`, a service
   token; the same batch again is all duplicates);
2. the analytics worker ticks; a teacher reads the group's stats (the KPIs computed here
   independently) and is refused another group;
3. the teacher requests a PDF, it becomes ready, the e-mail arrives with the link, the link
   downloads the PDF (Cyrillic group name extractable);
4. every process's /metrics shows its counters moved, every log line is JSON, and the export
   worker's lines about the export carry the request id of the request that created it;
5. the export worker is SIGKILLed in the middle of an export (held inside its database read);
   a new worker takes the export again once the lease runs out, and it completes exactly once:
   one object in S3.
"""

import io
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from pypdf import PdfReader

from tests.conftest import TokenFactory
from tests.kpis import metrics
from tests.ops import processes
from tests.ops.processes import ServiceProcess
from tests.servers import S3Server, SmtpServer

pytestmark = pytest.mark.slow

T = TypeVar("T")

GROUP = "g-7a"
OTHER_GROUP = "g-7b"
GROUP_NAME = "7«А» класс — математика"
TEACHER_EMAIL = "teacher@school.test"
LEASE_SECS = 2
BUDGET_SECS = 60


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20) -> T:
    """Poll `probe` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass(frozen=True)
class School:
    directory: dict[str, Any]
    attempts: list[dict[str, Any]]

    def group_kpis(self, group_id: str) -> dict[str, float]:
        """CONTRACT §2's KPIs of one group, computed here from the raw attempts sent."""
        return metrics([SimpleNamespace(**a) for a in self.attempts if a["group_id"] == group_id])


def make_school() -> School:
    levels = [
        {"id": "L1", "name": "Начальный", "position": 1},
        {"id": "L2", "name": "Средний", "position": 2},
    ]
    topics = [
        {"id": "T-frac", "name": "Дроби", "level_id": "L1"},
        {"id": "T-eq", "name": "Уравнения", "level_id": "L2"},
    ]
    groups = [{"id": GROUP, "name": GROUP_NAME}, {"id": OTHER_GROUP, "name": "7«Б» класс"}]
    users = [
        {
            "id": f"u{n}",
            "display_name": f"Ученик Иванов-{n}",
            "group_ids": [GROUP if n < 6 else OTHER_GROUP],
        }
        for n in range(10)
    ]
    base = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
    attempts = []
    for n in range(10):
        for k in range(12):
            attempts.append(
                {
                    "event_id": f"ev-{n}-{k}",
                    "user_id": f"u{n}",
                    "group_id": GROUP if n < 6 else OTHER_GROUP,
                    "topic_id": "T-frac" if k % 3 else "T-eq",
                    "task_id": f"task-{k}",
                    "is_correct": (n + k) % 3 != 0,
                    "score": float((n * 7 + k * 3) % 10),
                    "hints_used": 1 if k % 4 == 0 else 0,
                    "time_spent_ms": 1000 + 250 * k,
                    "attempted_at": (base + timedelta(hours=n, minutes=k)).isoformat(),
                }
            )
    directory = {"groups": groups, "users": users, "levels": levels, "topics": topics}
    return School(directory, attempts)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


class Stack:
    """The running processes and the way to reach them."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.running: list[ServiceProcess] = []

    def start(self, starter: Callable[..., ServiceProcess], **kwargs: str) -> ServiceProcess:
        service = starter(self.env, self.workdir, **kwargs)
        self.running.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.running:
            if service.process.poll() is None:
                service.terminate()


def _client(api: ServiceProcess, token: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=10
    )


def test_the_school_story(
    fresh_db_url: str,
    s3: S3Server,
    smtp: SmtpServer,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    begun = time.monotonic()
    bucket = s3.create_bucket("scenario-exports")
    env = processes.service_env(
        database_url=fresh_db_url,
        data_dir=tmp_path / "data",
        extra={
            "OBJECT_STORAGE_ENDPOINT": s3.endpoint,
            "OBJECT_STORAGE_BUCKET": bucket,
            "OBJECT_STORAGE_ACCESS_KEY": "test-access-key",
            "OBJECT_STORAGE_SECRET_KEY": "test-secret-key",
            "OBJECT_STORAGE_REGION": "us-east-1",
            "OBJECT_STORAGE_PREFIX": "school/",
            "REPORTING_SMTP_HOST": smtp.host,
            "REPORTING_SMTP_PORT": str(smtp.port),
            "REPORTING_WORKER_INTERVAL_SECS": "1",
            "REPORTING_EXPORT_LEASE_SECS": str(LEASE_SECS),
            "REPORTING_EXPORT_POLL_SECS": "0.5",
        },
    )
    stack = Stack(env, tmp_path)
    school = make_school()
    clients = ExitStack()
    try:
        api = stack.start(processes.start_api)
        service = clients.enter_context(_client(api, make_token("service", sub="platform")))
        teacher_token = make_token("teacher", groups=[GROUP], sub="teacher-1", email=TEACHER_EMAIL)

        # 1. ingestion
        response = service.put("/ingest/directory", json=school.directory)
        assert response.status_code == 200, response.text
        response = service.post("/ingest/attempts", json={"attempts": school.attempts})
        assert response.status_code == 200, response.text
        assert response.json() == {"inserted": len(school.attempts), "duplicates": 0}
        again = service.post("/ingest/attempts", json={"attempts": school.attempts[:10]})
        assert again.json() == {"inserted": 0, "duplicates": 10}

        # 2. a tick, then the teacher's view of the group
        worker = stack.start(processes.start_reporting_worker)
        teacher = clients.enter_context(_client(api, teacher_token))
        stats = wait_for("the group's stats", lambda: _group_stats(teacher))
        expected = school.group_kpis(GROUP)
        for name, value in expected.items():
            assert stats["stats"]["metrics"][name] == pytest.approx(value), name
        assert stats["name"] == GROUP_NAME
        assert teacher.get(f"/stats/groups/{OTHER_GROUP}").status_code == 403

        # 3. a PDF, by e-mail, downloaded by its link
        exporter = stack.start(processes.start_export_worker)
        request_id = "scenario-pdf-0001"
        pdf_id = _request_export(teacher, "pdf", request_id)
        ready = wait_for("the PDF", lambda: _ready(teacher, pdf_id))
        (mail,) = smtp.wait_for(1, timeout=20)
        assert mail.rcpt_tos == [TEACHER_EMAIL]
        link = _link(mail.text())
        assert link.startswith(s3.endpoint), link
        assert ready["download_url"].startswith(s3.endpoint)
        download = httpx.get(link, timeout=10)
        assert download.status_code == 200
        assert download.content.startswith(b"%PDF")
        text = "".join(
            page.extract_text() for page in PdfReader(io.BytesIO(download.content)).pages
        )
        assert GROUP_NAME in text

        # 4. counters moved in every process; JSON logs; the request id followed the export
        api_metrics = api.metrics()
        assert api_metrics.value("exports_requested_total", format="pdf") == 1
        assert (
            api_metrics.value("http_requests_total", route="/stats/groups/{group_id}", status="200")
            >= 1
        )
        assert api_metrics.value("http_requests_total", route="/ingest/attempts", status="200") == 2
        worker_metrics = worker.metrics()
        assert worker_metrics.value("analytics_worker_ticks_total", status="success") >= 1
        assert worker_metrics.value("reporting_worker_ticks_total") >= 1
        assert worker_metrics.value("reporting_worker_tick_duration_seconds_count") >= 1
        assert worker_metrics.value("reporting_worker_last_success_timestamp_seconds") > 0
        export_metrics = exporter.metrics()
        assert export_metrics.value("exports_generated_total", format="pdf") == 1
        assert export_metrics.value("export_worker_ticks_total", status="success") >= 1
        assert export_metrics.value("export_worker_ticks_total", status="error") == 0
        assert export_metrics.value("notifications_sent_total", channel="email") == 1
        for process in (api, worker, exporter):
            process.log_records()  # fails on any line that is not JSON
        about_export = [r for r in exporter.log_records() if r.get("export_id") == pdf_id]
        assert about_export, exporter.tail()
        assert {r.get("request_id") for r in about_export} == {request_id}

        # The analytics worker is done here; stopped now, it cannot be the session that waits
        # on the lock below (it reads attempts too).
        assert worker.terminate() == 0

        # 5. SIGKILL in the middle of an export; a new worker completes it exactly once
        with psycopg.connect(fresh_db_url) as blocker:
            blocker.execute("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
            csv_id = _request_export(teacher, "csv", "scenario-csv-0002")
            wait_for(
                "the export worker inside the export", lambda: _stuck_in_read(fresh_db_url, csv_id)
            )
            exporter.kill()
            blocker.rollback()
        assert _status(fresh_db_url, csv_id) == "processing"
        retaker = stack.start(processes.start_export_worker, name="export-worker-2")
        ready = wait_for(
            "the retaken export", lambda: _ready(teacher, csv_id), timeout=LEASE_SECS + 15
        )
        csv = httpx.get(ready["download_url"], timeout=10)
        assert csv.status_code == 200
        assert csv.content.startswith("\ufeffgroup_id,group_name,".encode())
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert sorted(keys) == sorted(
            [f"school/exports/{GROUP}/{pdf_id}.pdf", f"school/exports/{GROUP}/{csv_id}.csv"]
        )
        assert retaker.metrics().value("exports_generated_total", format="csv") == 1
        assert _claims(fresh_db_url, csv_id) == 2  # taken twice, produced once
        mails = smtp.wait_for(2, timeout=20)
        time.sleep(1)  # a duplicate notice would come right behind the first
        assert len([m for m in smtp.messages if csv_id in m.text()]) == 1, [
            m.subject for m in mails
        ]
    finally:
        clients.close()
        stack.stop_all()
    elapsed = time.monotonic() - begun
    print(f"scenario: {elapsed:.1f} s")
    assert elapsed <= BUDGET_SECS


def _group_stats(client: httpx.Client) -> dict[str, Any] | None:
    response = client.get(f"/stats/groups/{GROUP}")
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body if body.get("stats") else None


def _request_export(client: httpx.Client, format: str, request_id: str) -> str:
    response = client.post(
        f"/stats/groups/{GROUP}/export",
        json={
            "topic_ids": [],
            "period": {"from": "2026-09-01", "to": "2026-09-30"},
            "format": format,
            "locale": "ru",
        },
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == request_id
    export_id: str = response.json()["id"]
    assert response.headers["location"] == f"/stats/exports/{export_id}"
    return export_id


def _ready(client: httpx.Client, export_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(f"/stats/exports/{export_id}").json()
    assert body["status"] in {"pending", "processing", "ready"}, body
    return body if body["status"] == "ready" else None


def _link(text: str) -> str:
    match = re.search(r"https?://\S+", text)
    assert match, f"no link in the e-mail:\n{text}"
    return match.group(0)


def _status(url: str, export_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status FROM report_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def _claims(url: str, export_id: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT attempts FROM report_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _stuck_in_read(url: str, export_id: str) -> bool:
    """The export is claimed and a worker session waits on our lock (it is inside the export)."""
    with psycopg.connect(url) as conn:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return _status(url, export_id) == "processing" and waiting is not None and waiting[0] > 0
