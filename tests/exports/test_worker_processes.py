"""The real `export-worker` console script as processes: two workers share the queue without
producing anything twice; a worker killed mid-export is replaced after its lease; SIGTERM
finishes the export in hand and exits 0, and a second SIGTERM abandons it to the next worker."""

import asyncio
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from reporting.settings import ExportSettings
from tests.exports.conftest import (
    GROUP,
    SEPTEMBER,
    Deployment,
    DeploymentFactory,
    School,
    rows_of,
)
from tests.ops.processes import BIN, run_once, service_env, start_export_worker
from tests.servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, S3Server, free_port

pytestmark = pytest.mark.slow

BODY: dict[str, Any] = {"topic_ids": [], "period": SEPTEMBER, "format": "csv"}
BIG_GROUP = "g-big"


def _env(deployment: Deployment, tmp_path: Path, **extra: str) -> dict[str, str]:
    assert deployment.s3 is not None and deployment.bucket is not None
    return service_env(
        database_url=deployment.url,
        data_dir=tmp_path / "data",
        extra={
            "OBJECT_STORAGE_ENDPOINT": deployment.s3.endpoint,
            "OBJECT_STORAGE_BUCKET": deployment.bucket,
            "OBJECT_STORAGE_ACCESS_KEY": S3_ACCESS_KEY,
            "OBJECT_STORAGE_SECRET_KEY": S3_SECRET_KEY,
            "OBJECT_STORAGE_REGION": S3_REGION,
            "OBJECT_STORAGE_PREFIX": deployment.settings.storage.prefix,
            **extra,
        },
    )


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _statuses(url: str) -> list[tuple[str, str, int]]:
    return [
        (str(row[0]), row[1], row[2])
        for row in rows_of(url, "SELECT id, status, attempts FROM report_exports ORDER BY id")
    ]


async def test_two_workers_produce_each_of_twenty_exports_exactly_once(
    make_deployment: DeploymentFactory, school: School, tmp_path: Path
) -> None:
    many = ExportSettings(REPORTING_EXPORT_RATE_LIMIT_PER_HOUR=100)
    async with make_deployment("s3", exports=many) as deployment:
        env = _env(deployment, tmp_path)
        workers = [start_export_worker(env, tmp_path, name=f"export-worker-{n}") for n in (1, 2)]
        try:
            teacher = deployment.teacher()
            responses = [await deployment.request(teacher, BODY) for _ in range(20)]
            assert all(r.status_code == 202 for r in responses)
            await asyncio.to_thread(
                _wait,
                lambda: all(s == "ready" for _, s, _ in _statuses(deployment.url)),
                60,
                "20 ready exports",
            )
            produced = [w.metrics().value("exports_generated_total", format="csv") for w in workers]
        finally:
            codes = [w.terminate() for w in workers]
    assert codes == [0, 0]
    assert sum(produced) == 20, produced
    statuses = _statuses(deployment.url)
    assert len(statuses) == 20 and all(attempts == 1 for _, _, attempts in statuses)
    keys = {f"reports/exports/g-7a/{export_id}.csv" for export_id, _, _ in statuses}
    assert set(deployment.objects()) == keys
    # Each worker logs with the request id of the API request that asked for the export.
    request_ids = {r.headers["x-request-id"] for r in responses}
    logged = {
        record.get("request_id")
        for w in workers
        for record in w.log_records()
        if str(record.get("msg", "")).startswith("export ")
    }
    assert request_ids <= logged


def _load_big_group(url: str, students: int, topics: int) -> None:
    """A group with one attempt per (student, topic): students * topics rows to export."""
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO groups (id, name) VALUES (%s, 'Большая группа')", (BIG_GROUP,))
        conn.execute("INSERT INTO levels (id, name) VALUES ('big-level', 'Уровень')")
        conn.execute(
            "INSERT INTO topics (id, name, level_key) SELECT 'bt-' || i, 'Тема ' || i, l.key"
            " FROM generate_series(1, %s) i, levels l WHERE l.id = 'big-level'",
            (topics,),
        )
        conn.execute(
            "INSERT INTO users (id, display_name) SELECT 'bu-' || i, 'Ученик ' || i"
            " FROM generate_series(1, %s) i",
            (students,),
        )
        conn.execute(
            "INSERT INTO user_groups (user_key, group_key) SELECT u.key, g.key FROM users u,"
            " groups g WHERE u.id LIKE 'bu-%%' AND g.id = %s",
            (BIG_GROUP,),
        )
        conn.execute(
            """
            INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct,
                                  score, hints_used, time_spent_ms, attempted_at)
            SELECT 'big-' || u.key || '-' || t.key, u.key, g.key, t.key, 'task', (u.key + t.key) %% 3 > 0,
                   1, (u.key + t.key) %% 2, 1000 + u.key, '2026-09-15T10:00:00Z'
            FROM users u, topics t, groups g
            WHERE u.id LIKE 'bu-%%' AND t.id LIKE 'bt-%%' AND g.id = %s
            """,
            (BIG_GROUP,),
        )


def _status(url: str, export_id: str) -> tuple[str, int]:
    row = rows_of(url, "SELECT status, attempts FROM report_exports WHERE id = %s", export_id)[0]
    return row[0], row[1]


async def test_a_killed_worker_is_replaced_after_its_lease_and_sigterm_finishes_the_export(
    make_deployment: DeploymentFactory, school_url: str, tmp_path: Path
) -> None:
    _load_big_group(school_url, 200, 200)
    async with make_deployment("s3") as deployment:
        env = _env(
            deployment,
            tmp_path,
            REPORTING_EXPORT_LEASE_SECS="2",
            REPORTING_EXPORT_POLL_SECS="0.5",
        )
        first = start_export_worker(env, tmp_path, name="export-worker-killed")
        admin = deployment.admin()
        response = await deployment.request(
            admin, {**BODY, "format": "xlsx", "period": SEPTEMBER}, BIG_GROUP
        )
        export_id = response.json()["id"]
        await asyncio.to_thread(
            _wait, lambda: _status(deployment.url, export_id)[0] == "processing", 30, "the claim"
        )
        time.sleep(0.5)
        first.kill()  # SIGKILL mid-export
        assert _status(deployment.url, export_id) == ("processing", 1)
        assert deployment.objects() == []

        second = start_export_worker(env, tmp_path, name="export-worker-second")
        try:
            # The lease runs out (2 s after the last heartbeat) and the export is retaken.
            await asyncio.to_thread(
                _wait,
                lambda: _status(deployment.url, export_id) == ("processing", 2),
                30,
                "the retake",
            )
        finally:
            code = second.terminate(timeout=60)  # mid-export: finishes it, then exits
        assert code == 0
        assert _status(deployment.url, export_id) == ("ready", 2)
        assert deployment.objects() == [f"reports/exports/{BIG_GROUP}/{export_id}.xlsx"]
        export = (await deployment.api.get(f"/stats/exports/{export_id}", headers=admin)).json()
        content = (await deployment.download(export["download_url"])).content
    assert content.startswith(b"PK")  # a zip: the workbook


async def test_a_second_sigterm_abandons_the_export_in_hand_and_it_is_taken_again(
    make_deployment: DeploymentFactory, school: School, tmp_path: Path
) -> None:
    async with make_deployment("s3") as deployment:
        env = _env(
            deployment,
            tmp_path,
            REPORTING_EXPORT_LEASE_SECS="2",
            REPORTING_EXPORT_POLL_SECS="0.5",
            # A channel on, so the export's last transaction queues a notice in the outbox.
            REPORTING_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook",
            REPORTING_WEBHOOK_SECRET="hook-secret",
        )
        with (
            psycopg.connect(deployment.url) as blocker,
            psycopg.connect(deployment.url, autocommit=True) as watcher,
        ):
            # The export is produced and uploaded, then its "ready" transaction waits here.
            blocker.execute("LOCK TABLE notification_outbox IN SHARE MODE")
            worker = start_export_worker(env, tmp_path, name="export-worker-interrupted")
            try:
                response = await deployment.request(deployment.teacher(), BODY)
                export_id = response.json()["id"]
                await asyncio.to_thread(
                    _wait,
                    lambda: (
                        watcher.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE '%INSERT INTO notification_outbox%'"
                        ).fetchone()
                        == (1,)
                    ),
                    30,
                    "the export's last transaction to wait for the outbox",
                )
                worker.process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert worker.process.poll() is None  # finishing the export in hand
                worker.process.send_signal(signal.SIGTERM)
                code = worker.terminate(timeout=10)  # while the lock is still held
            finally:
                worker.kill()  # only if the test failed before it stopped
            assert _status(deployment.url, export_id) == ("processing", 1)
        assert code == 0, worker.tail()
        assert any(
            str(record.get("msg", "")).startswith("export worker stopped by a second signal")
            for record in worker.log_records()
        ), worker.tail()

        second = start_export_worker(env, tmp_path, name="export-worker-second")
        try:
            await asyncio.to_thread(
                _wait,
                lambda: _status(deployment.url, export_id) == ("ready", 2),
                30,
                "the retake once the lease ran out",
            )
        finally:
            assert second.terminate() == 0
    assert deployment.objects() == [f"reports/exports/{GROUP}/{export_id}.csv"]


async def test_once_produces_what_is_pending_and_exits_zero(
    make_deployment: DeploymentFactory, school: School, tmp_path: Path
) -> None:
    async with make_deployment("s3") as deployment:
        teacher = deployment.teacher()
        ids = [
            (await deployment.request(teacher, {**BODY, "format": fmt})).json()["id"]
            for fmt in ("csv", "pdf", "xlsx")
        ]
        output = await asyncio.to_thread(
            run_once, "export-worker", _env(deployment, tmp_path), tmp_path
        )
    assert [_status(deployment.url, export_id) for export_id in ids] == [("ready", 1)] * 3
    assert len(deployment.objects()) == 3
    assert "ready in" in output


def test_a_busy_metrics_port_stops_the_export_worker_with_one_line(
    fresh_db_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "export-worker"), "--metrics-port", str(port)],
            env=service_env(database_url=fresh_db_url, data_dir=tmp_path / "data"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: cannot serve metrics on 127.0.0.1:{port}:"
    )


def test_an_unusable_bucket_is_named_at_start_and_the_worker_still_runs(
    fresh_db_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    env = service_env(
        database_url=fresh_db_url,
        data_dir=tmp_path / "data",
        extra={
            "OBJECT_STORAGE_ENDPOINT": s3_server.endpoint,
            "OBJECT_STORAGE_BUCKET": "no-such-bucket-here",
            "OBJECT_STORAGE_ACCESS_KEY": S3_ACCESS_KEY,
            "OBJECT_STORAGE_SECRET_KEY": S3_SECRET_KEY,
            "OBJECT_STORAGE_REGION": S3_REGION,
        },
    )
    output = run_once("export-worker", env, tmp_path)  # nothing pending: exits 0
    warnings = [
        entry
        for entry in map(json.loads, filter(None, output.splitlines()))
        if entry.get("msg") == "object storage is not usable yet"
    ]
    assert len(warnings) == 1, output
    assert "'no-such-bucket-here'" in warnings[0]["error"]
    assert "does not exist" in warnings[0]["error"]


def test_a_lost_database_counts_as_failed_rounds(
    fresh_db_url: str, server_url: str, tmp_path: Path
) -> None:
    """The alert on the export worker's error rounds must see a database outage."""
    worker = start_export_worker(
        service_env(database_url=fresh_db_url, data_dir=tmp_path / "data"), tmp_path
    )
    try:
        assert worker.metrics().value("export_worker_ticks_total", status="error") == 0
        with psycopg.connect(server_url, autocommit=True) as admin:
            name = str(conninfo_to_dict(fresh_db_url)["dbname"])
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        _wait(
            lambda: worker.metrics().value("export_worker_ticks_total", status="error") >= 2,
            30,
            "error rounds counted",
        )
    finally:
        assert worker.terminate() == 0
    lost = [r for r in worker.log_records() if r.get("msg") == "database connection lost; retrying"]
    assert lost and lost[0]["level"] == "warning", worker.tail()
