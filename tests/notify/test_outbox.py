"""The outbox on a real PostgreSQL with real receivers: what gets queued, delivery, retries with
backoff, giving up, and several workers sharing the rows."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.rows import class_row

from reporting.notify.outbox import (
    DeliveryReport,
    ExportNotice,
    backoff_seconds,
    deliver_due,
    enqueue,
    planned_channels,
)
from reporting.notify.webhook import verify
from reporting.settings import NotifySettings
from tests.servers import HttpCapture, SmtpServer, free_port

WEBHOOK_SECRET = "whsec-" + "k" * 26
BOT_TOKEN = "4242:outbox-token"


def make_export(conn: psycopg.Connection, group_id: str = "7a") -> str:
    """A report_exports row for the outbox to point at (only its id matters here)."""
    row = conn.execute(
        "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters, format)"
        " VALUES ('teacher-1', '{}', %s, '{}', 'pdf') RETURNING id::text",
        (group_id,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def notice(export_id: str, **changes: object) -> ExportNotice:
    fields: dict[str, object] = {
        "export_id": export_id,
        "group_id": "7a",
        "group_name": "7А",
        "format": "pdf",
        "status": "ready",
        "download_url": "https://reports.example/files/x.pdf?sig=1",
        "url_expires_at": datetime.now(UTC) + timedelta(hours=1),
        "email": "teacher@school.example",
        "request_id": "req-1",
    }
    fields.update(changes)
    return ExportNotice(**fields)  # type: ignore[arg-type]


def settings_for(
    *,
    smtp: SmtpServer | None = None,
    hook_url: str | None = None,
    telegram_base: str | None = None,
    **more: object,
) -> NotifySettings:
    values: dict[str, object] = {}
    if smtp is not None:
        values |= {"REPORTING_SMTP_HOST": smtp.host, "REPORTING_SMTP_PORT": smtp.port}
    if hook_url is not None:
        values |= {"REPORTING_WEBHOOK_URL": hook_url, "REPORTING_WEBHOOK_SECRET": WEBHOOK_SECRET}
    if telegram_base is not None:
        values |= {
            "REPORTING_TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "REPORTING_TELEGRAM_CHAT_ID": "1001",
            "REPORTING_TELEGRAM_API_BASE": telegram_base,
        }
    return NotifySettings(**(values | more))  # type: ignore[arg-type]


@dataclass(frozen=True)
class OutboxRow:
    channel: str
    event: str
    attempts: int
    delivered_at: datetime | None
    gave_up_at: datetime | None
    last_error: str | None
    payload: dict[str, Any]
    wait: float  # seconds until the row is due again
    delivery_id: str


def rows(conn: psycopg.Connection) -> list[OutboxRow]:
    with conn.cursor(row_factory=class_row(OutboxRow)) as cur:
        return cur.execute(
            "SELECT channel, event, attempts, delivered_at, gave_up_at, last_error, payload,"
            " extract(epoch FROM next_attempt_at - clock_timestamp())::float8 AS wait,"
            " delivery_id::text FROM notification_outbox ORDER BY id"
        ).fetchall()


def time_passes(conn: psycopg.Connection) -> None:
    """Every queued row falls due now, as if its backoff had run out."""
    conn.execute("UPDATE notification_outbox SET next_attempt_at = clock_timestamp()")


def sample(name: str, channel: str) -> float:
    return REGISTRY.get_sample_value(name, {"channel": channel}) or 0.0


@pytest.fixture
def autocommit(fresh_db_url: str) -> Iterator[psycopg.Connection]:
    """A committed-work connection on a database of its own (several connections see it)."""
    with psycopg.connect(fresh_db_url, autocommit=True) as connection:
        yield connection


# --- enqueue -----------------------------------------------------------------------------------


def test_only_configured_channels_with_a_destination_are_queued(conn: psycopg.Connection) -> None:
    export_id = make_export(conn)
    nothing = NotifySettings()
    email_only_server = settings_for(REPORTING_SMTP_HOST="mail.example", REPORTING_SMTP_PORT=25)
    everything = settings_for(
        REPORTING_SMTP_HOST="mail.example",
        hook_url="http://127.0.0.1:9/hook",
        telegram_base="http://127.0.0.1:9",
    )

    assert planned_channels(notice(export_id), nothing) == []
    assert planned_channels(notice(export_id, email=None), email_only_server) == []
    assert planned_channels(notice(export_id, email="not an address"), email_only_server) == []
    assert planned_channels(notice(export_id), everything) == ["email", "telegram", "webhook"]
    no_default_chat = settings_for(REPORTING_TELEGRAM_BOT_TOKEN=BOT_TOKEN)
    assert planned_channels(notice(export_id), no_default_chat) == []
    assert planned_channels(notice(export_id, telegram_chat_id="77"), no_default_chat) == [
        "telegram"
    ]

    assert enqueue(conn, notice(export_id), nothing) == 0
    assert enqueue(conn, notice(export_id, telegram_chat_id="@class7a"), everything) == 3
    assert enqueue(conn, notice(export_id), everything) == 0  # the same event again: no repeats
    failed = notice(export_id, status="failed", download_url=None, error="boom")
    assert enqueue(conn, failed, everything) == 3

    queued = rows(conn)
    assert [(r.channel, r.event) for r in queued] == [
        ("email", "export.ready"),
        ("telegram", "export.ready"),
        ("webhook", "export.ready"),
        ("email", "export.failed"),
        ("telegram", "export.failed"),
        ("webhook", "export.failed"),
    ]
    telegram_payloads = [r.payload for r in queued if r.channel == "telegram"]
    assert [p["telegram_chat_id"] for p in telegram_payloads] == ["@class7a", "1001"]
    assert all(r.attempts == 0 and r.delivered_at is None for r in queued)
    assert len({r.delivery_id for r in queued}) == 6


# --- delivery ----------------------------------------------------------------------------------


def test_every_channel_is_delivered_once(
    conn: psycopg.Connection, smtp_server: SmtpServer, http_capture: HttpCapture
) -> None:
    settings = settings_for(
        smtp=smtp_server, hook_url=http_capture.url("/hook"), telegram_base=http_capture.url()
    )
    export_id = make_export(conn)
    enqueue(conn, notice(export_id), settings)
    sent_before = {
        c: sample("notifications_sent_total", c) for c in ("email", "telegram", "webhook")
    }

    report = deliver_due(conn, settings)

    assert report == DeliveryReport(sent=3, retrying=0, gave_up=0)
    [mail] = smtp_server.wait_for(1)
    assert mail.subject == "Отчёт готов: 7А (PDF)"
    telegram, hook = http_capture.wait_for(2)
    assert telegram.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert telegram.json()["chat_id"] == 1001
    assert hook.path == "/hook"
    assert verify(hook.body, WEBHOOK_SECRET, hook.headers["x-reporting-signature"])
    assert json.loads(hook.body)["export_id"] == export_id
    delivered = rows(conn)
    assert all(r.delivered_at is not None and r.attempts == 1 for r in delivered)
    webhook_row = next(r for r in delivered if r.channel == "webhook")
    assert hook.headers["x-reporting-delivery"] == webhook_row.delivery_id
    for channel in ("email", "telegram", "webhook"):
        assert sample("notifications_sent_total", channel) == sent_before[channel] + 1

    assert deliver_due(conn, settings) == DeliveryReport()  # nothing left
    assert len(http_capture.requests) == 2 and len(smtp_server.messages) == 1


def test_a_failing_endpoint_is_retried_with_backoff_until_delivered(
    conn: psycopg.Connection, http_capture: HttpCapture
) -> None:
    settings = settings_for(hook_url=http_capture.url("/hook"), REPORTING_NOTIFY_RETRY_BASE_SECS=30)
    enqueue(conn, notice(make_export(conn)), settings)
    http_capture.fail_next(2)
    failed_before = sample("notifications_failed_total", "webhook")

    first = deliver_due(conn, settings)
    [row] = rows(conn)
    assert first == DeliveryReport(retrying=1)
    assert row.attempts == 1 and row.delivered_at is None
    assert row.last_error == f"webhook {http_capture.url('/hook')} answered HTTP 503"
    assert 29 < row.wait <= 37.5  # 30 s + jitter
    assert deliver_due(conn, settings) == DeliveryReport()  # not due yet: nothing is sent

    time_passes(conn)
    assert deliver_due(conn, settings) == DeliveryReport(retrying=1)
    [row] = rows(conn)
    assert 59 < row.wait <= 75  # doubled

    time_passes(conn)
    assert deliver_due(conn, settings) == DeliveryReport(sent=1)
    [row] = rows(conn)
    assert row.attempts == 3 and row.delivered_at is not None
    assert [r.answered for r in http_capture.requests] == [503, 503, 200]
    bodies = {r.body for r in http_capture.requests}
    assert len(bodies) == 1  # every retry sends the very same signed bytes
    assert len({r.headers["x-reporting-delivery"] for r in http_capture.requests}) == 1
    assert sample("notifications_failed_total", "webhook") == failed_before + 2


def test_connection_refused_then_the_receiver_comes_up(conn: psycopg.Connection) -> None:
    port = free_port()
    settings = settings_for(hook_url=f"http://127.0.0.1:{port}/hook")
    enqueue(conn, notice(make_export(conn)), settings)

    started = time.monotonic()
    assert deliver_due(conn, settings) == DeliveryReport(retrying=1)
    assert time.monotonic() - started < 2
    [row] = rows(conn)
    assert "ConnectError" in str(row.last_error)

    with HttpCapture(port=port) as receiver:
        time_passes(conn)
        assert deliver_due(conn, settings) == DeliveryReport(sent=1)
        assert len(receiver.requests) == 1
    [row] = rows(conn)
    assert row.delivered_at is not None and row.last_error is None


def test_receivers_wish_for_a_later_retry_is_honoured(
    conn: psycopg.Connection, http_capture: HttpCapture
) -> None:
    settings = settings_for(telegram_base=http_capture.url(), REPORTING_NOTIFY_RETRY_BASE_SECS=1)
    enqueue(conn, notice(make_export(conn)), settings)
    http_capture.fail_next(
        1,
        429,
        '{"ok": false, "description": "Too Many Requests", "parameters": {"retry_after": 30}}',
    )

    assert deliver_due(conn, settings) == DeliveryReport(retrying=1)
    [row] = rows(conn)
    assert 29 < row.wait <= 30
    assert BOT_TOKEN not in str(row.last_error)


def test_after_the_last_attempt_it_gives_up_and_stays_quiet(
    conn: psycopg.Connection, http_capture: HttpCapture
) -> None:
    settings = settings_for(
        hook_url=http_capture.url("/hook"),
        REPORTING_NOTIFY_MAX_ATTEMPTS=2,
    )
    enqueue(conn, notice(make_export(conn)), settings)
    http_capture.fail_next(10, status=500)

    assert deliver_due(conn, settings) == DeliveryReport(retrying=1)
    time_passes(conn)
    assert deliver_due(conn, settings) == DeliveryReport(gave_up=1)
    time_passes(conn)
    assert deliver_due(conn, settings) == DeliveryReport()
    [row] = rows(conn)
    assert row.attempts == 2 and row.gave_up_at is not None and row.delivered_at is None
    assert "HTTP 500" in str(row.last_error)
    assert len(http_capture.requests) == 2


def test_a_channel_switched_off_after_enqueue_fails_without_raising(
    conn: psycopg.Connection,
) -> None:
    queued_with = settings_for(REPORTING_SMTP_HOST="mail.example")
    enqueue(conn, notice(make_export(conn)), queued_with)

    report = deliver_due(conn, settings_for())
    assert report == DeliveryReport(retrying=1)
    [row] = rows(conn)
    assert "REPORTING_SMTP_HOST is unset" in str(row.last_error)


def test_an_unreadable_row_is_given_up_at_once(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO notification_outbox (export_id, event, channel, payload)"
        " VALUES (%s, 'export.ready', 'webhook', '{\"status\": \"weird\"}')",
        (make_export(conn),),
    )
    report = deliver_due(conn, settings_for(hook_url="http://127.0.0.1:9/hook"))
    assert report == DeliveryReport(gave_up=1)
    [row] = rows(conn)
    assert "unreadable outbox payload" in str(row.last_error)


def test_limit_bounds_one_call(conn: psycopg.Connection, http_capture: HttpCapture) -> None:
    settings = settings_for(hook_url=http_capture.url("/hook"))
    for _ in range(5):
        enqueue(conn, notice(make_export(conn)), settings)

    assert deliver_due(conn, settings, limit=2) == DeliveryReport(sent=2)
    assert deliver_due(conn, settings, limit=10) == DeliveryReport(sent=3)


def test_workers_share_the_rows_and_each_is_sent_once(
    autocommit: psycopg.Connection, fresh_db_url: str, http_capture: HttpCapture
) -> None:
    settings = settings_for(hook_url=http_capture.url("/hook"))
    for _ in range(40):
        with autocommit.transaction():
            enqueue(autocommit, notice(make_export(autocommit)), settings)
    reports: list[DeliveryReport] = []

    def worker() -> None:
        with psycopg.connect(fresh_db_url, autocommit=True) as own:
            while (report := deliver_due(own, settings, limit=5)).attempted:
                reports.append(report)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sum(r.sent for r in reports) == 40
    ids = [json.loads(r.body)["export_id"] for r in http_capture.requests]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert all(r.delivered_at is not None for r in rows(autocommit))


def test_enqueue_lives_and_dies_with_the_callers_transaction(
    autocommit: psycopg.Connection,
) -> None:
    settings = settings_for(hook_url="http://127.0.0.1:9/hook")
    with pytest.raises(RuntimeError), autocommit.transaction():
        enqueue(autocommit, notice(make_export(autocommit)), settings)
        raise RuntimeError("the export's status update failed")
    assert rows(autocommit) == []


def test_backoff_grows_is_capped_and_has_jitter() -> None:
    settings = NotifySettings(
        REPORTING_NOTIFY_RETRY_BASE_SECS=30, REPORTING_NOTIFY_RETRY_MAX_SECS=600
    )
    waits = [backoff_seconds(n, settings, None) for n in range(1, 8)]
    for n, wait in enumerate(waits[:5], start=1):
        assert 30 * 2 ** (n - 1) <= wait <= 30 * 2 ** (n - 1) * 1.25
    assert all(600 <= w <= 750 for w in waits[5:])
    assert len({backoff_seconds(1, settings, None) for _ in range(20)}) > 1
    assert backoff_seconds(1, settings, 100) == 100
    assert backoff_seconds(1, settings, 10_000) == 600
    assert backoff_seconds(10_000, settings, None) <= 750


def test_unique_ids_are_text(conn: psycopg.Connection) -> None:
    export_id = uuid.UUID(make_export(conn))
    assert notice(export_id).export_id == str(export_id)  # type: ignore[arg-type]
