"""Notices of ready/failed exports through real servers: SMTP (aiosmtpd), a webhook receiver,
and channels that are down, which must never fail an export."""

import asyncio
import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Any

import psycopg

from reporting.exports import worker
from reporting.settings import ExportSettings, NotifySettings, StorageSettings
from tests.conftest import make_settings
from tests.exports.conftest import (
    GROUP,
    GROUP_NAME,
    SEPTEMBER,
    Deployment,
    DeploymentFactory,
    School,
    rows_of,
)
from tests.servers import HttpCapture, SmtpServer, free_port

BODY: dict[str, Any] = {"topic_ids": [], "period": SEPTEMBER, "format": "pdf"}
SECRET = "webhook-secret-" + "s" * 16


def _deliver(deployment: Deployment) -> None:
    worker.deliver_notifications(deployment.url, deployment.settings, deployment.store)


async def test_the_ready_email_carries_a_link_that_downloads_the_file(
    make_deployment: DeploymentFactory, school: School, smtp_server: SmtpServer
) -> None:
    notify = NotifySettings(REPORTING_SMTP_HOST="127.0.0.1", REPORTING_SMTP_PORT=smtp_server.port)
    # The worker has no request to take a base URL from: links use REPORTING_PUBLIC_URL.
    public = ExportSettings(REPORTING_PUBLIC_URL="http://testserver")
    async with make_deployment(notify=notify, exports=public) as deployment:
        teacher = deployment.teacher(email="teacher@school.example")
        export = await deployment.produce(teacher, BODY)
        await asyncio.to_thread(_deliver, deployment)
        mail = smtp_server.wait_for(1)[0]
        assert mail.rcpt_tos == ["teacher@school.example"]
        assert GROUP_NAME in mail.subject or GROUP in mail.subject
        links = re.findall(r"http://testserver/files/\S+", mail.text())
        assert links, mail.text()
        via_mail = await deployment.download(links[0])
        via_api = await deployment.download(export["download_url"])
        assert via_mail.status_code == 200
        assert via_mail.content == via_api.content and via_mail.content.startswith(b"%PDF")


async def test_the_webhook_is_signed_and_a_failed_export_is_announced_too(
    make_deployment: DeploymentFactory, school: School, http_capture: HttpCapture
) -> None:
    notify = NotifySettings(
        REPORTING_WEBHOOK_URL=http_capture.url("/hook"), REPORTING_WEBHOOK_SECRET=SECRET
    )
    down = StorageSettings(
        OBJECT_STORAGE_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OBJECT_STORAGE_BUCKET="nowhere",
        OBJECT_STORAGE_ACCESS_KEY="k",
        OBJECT_STORAGE_SECRET_KEY="s",
    )
    # One claim allowed: the first storage failure is the last (else it waits for another claim).
    async with make_deployment(
        "s3", storage=down, notify=notify, exports=ExportSettings(REPORTING_EXPORT_MAX_ATTEMPTS=1)
    ) as deployment:
        response = await deployment.request(deployment.teacher(), BODY)
        await asyncio.to_thread(deployment.run_worker)
        await asyncio.to_thread(_deliver, deployment)
    request = http_capture.wait_for(1)[0]
    assert request.method == "POST" and request.path == "/hook"
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-reporting-signature"] == f"sha256={expected}"
    event = request.json()
    assert event["event"] == "export.failed"
    assert event["export_id"] == response.json()["id"]
    assert event["status"] == "failed" and event["download_url"] is None
    assert event["error"].startswith("storage unavailable")
    assert "127.0.0.1" not in event["error"] and "nowhere" not in event["error"]  # the operator's
    assert event["request_id"] == response.headers["x-request-id"]


def test_the_worker_warns_when_notices_would_carry_relative_links() -> None:
    """Local storage, a notification channel and no REPORTING_PUBLIC_URL: links in mail would be
    /files/… (the worker has no request to take an address from)."""
    mail = NotifySettings(REPORTING_SMTP_HOST="127.0.0.1")
    hook = NotifySettings(
        REPORTING_WEBHOOK_URL="http://127.0.0.1:9/hook", REPORTING_WEBHOOK_SECRET=SECRET
    )
    public = ExportSettings(REPORTING_PUBLIC_URL="https://reports.school.example")
    s3 = StorageSettings(
        OBJECT_STORAGE_BUCKET="reports",
        OBJECT_STORAGE_ACCESS_KEY="k",
        OBJECT_STORAGE_SECRET_KEY="s",
    )

    warning = worker.relative_links_warning(make_settings(notify=mail))
    assert warning is not None and "REPORTING_PUBLIC_URL" in warning
    assert worker.relative_links_warning(make_settings(notify=hook)) is not None
    assert worker.relative_links_warning(make_settings(notify=mail, exports=public)) is None
    assert worker.relative_links_warning(make_settings(notify=mail, storage=s3)) is None
    assert worker.relative_links_warning(make_settings()) is None  # no channel, no notices


async def test_channels_that_are_down_never_fail_the_export(
    make_deployment: DeploymentFactory, school: School
) -> None:
    notify = NotifySettings(
        REPORTING_SMTP_HOST="127.0.0.1",
        REPORTING_SMTP_PORT=free_port(),
        REPORTING_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook",
        REPORTING_WEBHOOK_SECRET=SECRET,
        REPORTING_NOTIFY_TIMEOUT_SECS=2,
    )
    async with make_deployment(notify=notify) as deployment:
        teacher = deployment.teacher(email="teacher@school.example")
        export = await deployment.produce(teacher, BODY)
        assert export["status"] == "ready"
        await asyncio.to_thread(_deliver, deployment)
        again = await deployment.api.get(f"/stats/exports/{export['id']}", headers=teacher)
    assert again.json()["status"] == "ready"
    outbox = rows_of(
        deployment.url,
        "SELECT channel, attempts, delivered_at, last_error FROM notification_outbox"
        " WHERE export_id = %s ORDER BY channel",
        export["id"],
    )
    assert [row[0] for row in outbox] == ["email", "webhook"]
    for _, attempts, delivered_at, last_error in outbox:
        assert attempts == 1 and delivered_at is None and last_error  # kept for a retry


async def test_a_retried_notice_carries_a_link_signed_for_that_delivery(
    make_deployment: DeploymentFactory, school: School, http_capture: HttpCapture
) -> None:
    notify = NotifySettings(
        REPORTING_WEBHOOK_URL=http_capture.url("/hook"), REPORTING_WEBHOOK_SECRET=SECRET
    )
    public = ExportSettings(REPORTING_PUBLIC_URL="http://testserver")
    async with make_deployment(notify=notify, exports=public) as deployment:
        export = await deployment.produce(deployment.teacher(), BODY)
        # The receiver was down for longer than a link lives: the link signed when the export
        # became ready has expired by the time the retry goes out.
        with psycopg.connect(deployment.url) as conn:
            conn.execute(
                "UPDATE notification_outbox SET payload = payload"
                ' || \'{"download_url": "http://testserver/files/stale",'
                ' "url_expires_at": "2026-01-01T00:00:00Z"}\'::jsonb'
                " WHERE export_id = %s",
                (export["id"],),
            )
        await asyncio.to_thread(_deliver, deployment)
        event = http_capture.wait_for(1)[0].json()
        assert event["download_url"].startswith("http://testserver/files/exports/")
        assert datetime.fromisoformat(event["url_expires_at"]) > datetime.now(UTC)
        fresh = await deployment.download(event["download_url"])
    assert fresh.status_code == 200 and fresh.content.startswith(b"%PDF")


async def test_a_notice_retried_after_its_export_expired_carries_no_link(
    make_deployment: DeploymentFactory, school: School, http_capture: HttpCapture
) -> None:
    notify = NotifySettings(
        REPORTING_WEBHOOK_URL=http_capture.url("/hook"), REPORTING_WEBHOOK_SECRET=SECRET
    )
    async with make_deployment(notify=notify) as deployment:
        export = await deployment.produce(deployment.teacher(), BODY)
        with psycopg.connect(deployment.url) as conn:
            conn.execute(
                "UPDATE report_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
                (export["id"],),
            )
        await asyncio.to_thread(_deliver, deployment)
    event = http_capture.wait_for(1)[0].json()
    assert event["status"] == "ready"
    assert event["download_url"] is None and event["url_expires_at"] is None


async def test_a_failed_export_is_explained_in_the_readers_language_with_the_group_name(
    make_deployment: DeploymentFactory, school: School, smtp_server: SmtpServer
) -> None:
    notify = NotifySettings(REPORTING_SMTP_HOST="127.0.0.1", REPORTING_SMTP_PORT=smtp_server.port)
    async with make_deployment(
        notify=notify, exports=ExportSettings(REPORTING_EXPORT_MAX_ATTEMPTS=1)
    ) as deployment:
        teacher = deployment.teacher(email="teacher@school.example")
        response = await deployment.request(teacher, BODY)
        # A worker claimed it and died: the next one gives up.
        with psycopg.connect(deployment.url) as conn:
            conn.execute(
                "UPDATE report_exports SET status = 'processing', attempts = 1,"
                " lease_expires_at = now() - interval '1 second' WHERE id = %s",
                (response.json()["id"],),
            )
        await asyncio.to_thread(deployment.run_worker)
        await asyncio.to_thread(_deliver, deployment)
    text = smtp_server.wait_for(1)[0].text()
    assert f"«{GROUP_NAME}»" in text, text
    assert "обработчик выгрузок несколько раз останавливался" in text
    assert "gave up" not in text
