"""The export worker in-process: leases and fencing, retries, failures, expiry, RLS, metrics."""

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from reporting.db.engine import connect
from reporting.exports import queries
from reporting.exports.produce import produce
from reporting.settings import ExportSettings, StorageSettings
from tests.exports.conftest import (
    GROUP,
    OTHER_GROUP,
    SEPTEMBER,
    Deployment,
    DeploymentFactory,
    School,
    rows_of,
)
from tests.servers import S3Server, free_port

BODY: dict[str, Any] = {"topic_ids": [], "period": SEPTEMBER, "format": "csv"}


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _status(url: str, export_id: str) -> tuple[Any, ...]:
    return rows_of(
        url,
        "SELECT status, error, attempts, storage_key, lease_expires_at FROM report_exports"
        " WHERE id = %s",
        export_id,
    )[0]


def _expire_lease(url: str, export_id: str) -> None:
    """As if the lease had run out (a lease is a minute by default)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE report_exports SET lease_expires_at = now() - interval '1 second'"
            " WHERE id = %s",
            (export_id,),
        )


async def test_a_ready_export_is_counted_and_timed(deployment: Deployment, school: School) -> None:
    generated = _sample("exports_generated_total", format="xlsx")
    timed = _sample("export_duration_seconds_count", format="xlsx")
    requested = _sample("exports_requested_total", format="xlsx")
    export = await deployment.produce(deployment.teacher(), {**BODY, "format": "xlsx"})
    assert export["status"] == "ready"
    assert export["started_at"] and export["finished_at"] and export["expires_at"]
    assert _sample("exports_generated_total", format="xlsx") == generated + 1
    assert _sample("export_duration_seconds_count", format="xlsx") == timed + 1
    assert _sample("exports_requested_total", format="xlsx") == requested + 1
    status, error, attempts, key, lease = _status(deployment.url, export["id"])
    assert (status, error, attempts, lease) == ("ready", None, 1, None)
    assert key.endswith(f"exports/{GROUP}/{export['id']}.xlsx")


async def test_a_worker_that_lost_its_lease_cannot_finish_the_export_twice(
    deployment: Deployment, school: School
) -> None:
    response = await deployment.request(deployment.teacher(), BODY)
    export_id = response.json()["id"]
    settings = deployment.settings
    with connect(deployment.url, autocommit=True) as conn:
        stale = queries.claim_next_export(conn, lease_seconds=60)
        assert stale is not None and stale.attempt == 1
        # The first worker stalls past its lease; a second one takes the export over.
        _expire_lease(deployment.url, export_id)
        result = await asyncio.to_thread(deployment.run_worker)
        assert (result.ready, result.failed) == (1, 0)
        # The stale worker wakes up and finishes: its writes are fenced off.
        outcome = produce(conn, deployment.url, settings, deployment.store, stale)
    assert outcome.status == "lost"
    status, _, attempts, key, _ = _status(deployment.url, export_id)
    assert (status, attempts) == ("ready", 2)
    assert deployment.objects() == [key]  # the same deterministic key: one object


async def test_storage_unreachable_delays_the_export_then_fails_it_with_a_clear_error(
    make_deployment: DeploymentFactory, school: School
) -> None:
    down = StorageSettings(
        OBJECT_STORAGE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OBJECT_STORAGE_BUCKET="nowhere",
        OBJECT_STORAGE_ACCESS_KEY="k",
        OBJECT_STORAGE_SECRET_KEY="s",
    )
    failed_before = _sample("exports_failed_total", format="csv")
    async with make_deployment(
        "s3", storage=down, exports=ExportSettings(REPORTING_EXPORT_MAX_ATTEMPTS=2)
    ) as deployment:
        teacher = deployment.teacher()
        response = await deployment.request(teacher, BODY)
        export_id = response.json()["id"]
        # The first claim cannot store it: the export waits a lease for the next claim.
        result = await asyncio.to_thread(deployment.run_worker)
        assert (result.ready, result.failed, result.retrying, result.ok) == (0, 0, 1, False)
        status, error, attempts, _, lease = _status(deployment.url, export_id)
        assert (status, attempts) == ("processing", 1)
        assert error.startswith("storage unavailable: the file could not be stored yet")
        assert lease is not None
        assert rows_of(
            deployment.url,
            "SELECT lease_expires_at > now() + interval '50 seconds'"
            " FROM report_exports WHERE id = %s",
            export_id,
        ) == [(True,)]
        # Not claimable before the lease runs out.
        assert (await asyncio.to_thread(deployment.run_worker)).retrying == 0
        _expire_lease(deployment.url, export_id)
        # The last claim allowed: it fails, and says so.
        result = await asyncio.to_thread(deployment.run_worker)
        assert (result.ready, result.failed, result.retrying) == (0, 1, 0)
        got = await deployment.api.get(response.headers["location"], headers=teacher)
    export = got.json()
    assert export["status"] == "failed" and export["download_url"] is None
    # Where the store is and how it failed is in the worker's log, not in the requester's answer.
    assert export["error"].startswith("storage unavailable: the file could not be stored")
    assert "nowhere" not in export["error"] and "127.0.0.1" not in export["error"]
    assert _status(deployment.url, export_id)[:3] == ("failed", export["error"], 2)
    assert _sample("exports_failed_total", format="csv") == failed_before + 1


async def test_an_export_delayed_by_the_store_is_produced_once_the_store_is_back(
    make_deployment: DeploymentFactory, school: School, s3_server: S3Server
) -> None:
    bucket = f"later-{uuid.uuid4().hex[:8]}"  # not there yet: every upload fails
    storage = s3_server.storage_settings(bucket, prefix="reports/")
    async with make_deployment("s3", storage=storage) as deployment:
        teacher = deployment.teacher()
        response = await deployment.request(teacher, BODY)
        export_id = response.json()["id"]
        assert (await asyncio.to_thread(deployment.run_worker)).retrying == 1
        during = await deployment.api.get(response.headers["location"], headers=teacher)
        assert during.json()["status"] == "processing"
        s3_server.create_bucket(bucket)
        _expire_lease(deployment.url, export_id)
        result = await asyncio.to_thread(deployment.run_worker)
        assert (result.ready, result.failed, result.retrying, result.ok) == (1, 0, 0, True)
        got = await deployment.api.get(response.headers["location"], headers=teacher)
    export = got.json()
    assert export["status"] == "ready" and export["error"] is None
    status, _, attempts, key, _ = _status(deployment.url, export_id)
    assert (status, attempts) == ("ready", 2)
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listing["Contents"]] == [key]
    downloaded = await deployment.download(export["download_url"])
    assert downloaded.status_code == 200 and downloaded.content.startswith(b"\xef\xbb\xbf")


async def test_an_export_whose_workers_keep_dying_fails_after_max_attempts(
    make_deployment: DeploymentFactory, school: School
) -> None:
    async with make_deployment(
        exports=ExportSettings(REPORTING_EXPORT_MAX_ATTEMPTS=2)
    ) as deployment:
        response = await deployment.request(deployment.teacher(), BODY)
        export_id = response.json()["id"]
        # Two workers claimed it and died (their leases ran out).
        with psycopg.connect(deployment.url) as conn:
            conn.execute(
                "UPDATE report_exports SET status = 'processing', attempts = 2,"
                " lease_expires_at = now() - interval '1 second' WHERE id = %s",
                (export_id,),
            )
        result = await asyncio.to_thread(deployment.run_worker)
    assert result.failed == 1
    status, error, attempts, _, _ = _status(deployment.url, export_id)
    assert (status, attempts) == ("failed", 3)
    assert error.startswith("gave up after 2 attempts")
    assert deployment.objects() == []


async def test_the_worker_reads_with_the_requesters_stored_scope(
    deployment: Deployment, school: School
) -> None:
    response = await deployment.request(deployment.teacher(), BODY)
    export_id = response.json()["id"]
    # Were the stored scope to lose the group, row-level security hides it from the worker.
    with psycopg.connect(deployment.url) as conn:
        conn.execute(
            "UPDATE report_exports SET requester_scope = %s WHERE id = %s",
            (json.dumps({"role": "teacher", "sub": "x", "group_ids": [OTHER_GROUP]}), export_id),
        )
    result = await asyncio.to_thread(deployment.run_worker)
    assert result.failed == 1
    status, error, *_ = _status(deployment.url, export_id)
    assert status == "failed"
    assert (
        error == f"cannot export: the group '{GROUP}' is unknown or outside the requester's scope"
    )


@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
async def test_an_expired_export_loses_its_object_and_link(
    deployment: Deployment, school: School
) -> None:
    teacher = deployment.teacher()
    export = await deployment.produce(teacher, BODY)
    link = export["download_url"]
    assert (await deployment.download(link)).status_code == 200
    assert len(deployment.objects()) == 1
    with psycopg.connect(deployment.url) as conn:
        conn.execute(
            "UPDATE report_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
            (export["id"],),
        )
    # Reported expired at once, before any sweep, and without a link.
    location = f"/stats/exports/{export['id']}"
    seen = (await deployment.api.get(location, headers=teacher)).json()
    assert (seen["status"], seen["download_url"], seen["url_expires_at"]) == ("expired", None, None)

    result = await asyncio.to_thread(deployment.run_worker)
    assert result.expired == 1
    assert deployment.objects() == []
    assert _status(deployment.url, export["id"])[0] == "expired"
    gone = await deployment.download(link)
    # The local store answers 410 itself; S3 refuses a key that is gone (moto: 403, like AWS
    # without list rights).
    assert gone.status_code in ((410,) if deployment.backend == "local" else (403, 404))
