"""Each channel against a real server: aiosmtpd for e-mail, an HTTP server for Telegram and the
webhook."""

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from reporting.notify import messages
from reporting.notify.email import is_valid_address, send_email
from reporting.notify.notice import DeliveryFailed, ExportNotice
from reporting.notify.telegram import send_telegram
from reporting.notify.webhook import send_webhook, sign, verify, webhook_body
from reporting.settings import NotifySettings
from tests.servers import HttpCapture, SmtpServer, free_port

EXPORT_ID = "7d0c7f64-2f1e-4c1b-9a53-0b7a3f1e2c11"
LINK = "https://reports.school.example/files/exports/7a/x.pdf?expires=1&fn=a.pdf&sig=abc"
WEBHOOK_SECRET = "whsec-" + "k" * 26
BOT_TOKEN = "123456:ABC-secret-token"


def _notice(**changes: object) -> ExportNotice:
    fields: dict[str, object] = {
        "export_id": EXPORT_ID,
        "group_id": "7a",
        "group_name": "7А",
        "format": "pdf",
        "status": "ready",
        "download_url": LINK,
        "url_expires_at": datetime(2026, 11, 28, 15, 0, tzinfo=UTC),
        "email": "teacher@school.example",
        "request_id": "req-42",
    }
    fields.update(changes)
    return ExportNotice(**fields)  # type: ignore[arg-type]


def _smtp(server: SmtpServer, **more: object) -> NotifySettings:
    return NotifySettings(
        REPORTING_SMTP_HOST=server.host,
        REPORTING_SMTP_PORT=server.port,
        REPORTING_SMTP_FROM="reports@school.example",
        **more,  # type: ignore[arg-type]
    )


# --- words -------------------------------------------------------------------------------------


def test_subjects_and_texts_in_both_languages() -> None:
    assert messages.subject(_notice()) == "Отчёт готов: 7А (PDF)"
    assert messages.subject(_notice(locale="en")) == "Report ready: 7А (PDF)"
    failed = _notice(status="failed", download_url=None, error="нет данных за период")
    assert messages.subject(failed) == "Отчёт не сформирован: 7А (PDF)"
    assert "Причина: нет данных за период" in messages.text(failed)
    assert "Reason: boom" in messages.text(_notice(status="failed", error="boom", locale="en"))

    ru = messages.text(_notice())
    assert LINK in ru and "28.11.2026 15:00 UTC" in ru and EXPORT_ID in ru
    assert "2026-11-28 15:00 UTC" in messages.text(_notice(locale="en"))
    # A group name can hold anything; the subject stays one line.
    assert (
        messages.subject(_notice(group_name="7А\r\nBcc: x@evil"))
        == "Отчёт готов: 7А Bcc: x@evil (PDF)"
    )


def test_notice_refuses_what_it_cannot_say() -> None:
    with pytest.raises(ValueError, match="status"):
        _notice(status="pending")
    with pytest.raises(ValueError, match="locale"):
        _notice(locale="de")
    with pytest.raises(ValueError, match="timezone"):
        _notice(url_expires_at=datetime(2026, 11, 28, 15, 0))
    notice = _notice()
    assert ExportNotice.from_payload(json.loads(json.dumps(notice.to_payload()))) == notice


# --- e-mail ------------------------------------------------------------------------------------


def test_email_arrives_with_a_cyrillic_subject_and_the_link(smtp_server: SmtpServer) -> None:
    send_email(_smtp(smtp_server), _notice(), to="teacher@school.example", delivery_id="d-1")

    [mail] = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["teacher@school.example"]
    assert mail.mail_from == "reports@school.example"
    assert mail.subject == "Отчёт готов: 7А (PDF)"
    assert b"=?utf-8?" in mail.raw.lower()  # encoded on the wire, decoded by the reader
    assert LINK in mail.text() and "28.11.2026 15:00 UTC" in mail.text()
    html = mail.html()
    assert html is not None and f'href="{LINK.replace("&", "&amp;")}"' in html
    assert mail.message["X-Reporting-Delivery"] == "d-1"
    assert mail.message["Message-ID"].endswith("@school.example>")


def test_email_in_english_and_for_a_failure(smtp_server: SmtpServer) -> None:
    notice = _notice(status="failed", download_url=None, error="renderer crashed", locale="en")
    send_email(_smtp(smtp_server), notice, to="t@school.example", delivery_id="d-2")

    [mail] = smtp_server.wait_for(1)
    assert mail.subject == "Report failed: 7А (PDF)"
    assert "renderer crashed" in mail.text()
    assert "http" not in mail.text()


def test_email_logs_in_when_configured() -> None:
    with SmtpServer(users={"mailer": "пароль-1"}) as server:
        settings = _smtp(server, REPORTING_SMTP_USER="mailer", REPORTING_SMTP_PASSWORD="пароль-1")
        send_email(settings, _notice(), to="t@school.example", delivery_id="d-3")
        [mail] = server.wait_for(1)
        assert mail.login == "mailer"

        wrong = _smtp(server, REPORTING_SMTP_USER="mailer", REPORTING_SMTP_PASSWORD="nope")
        with pytest.raises(DeliveryFailed, match="answered 535"):
            send_email(wrong, _notice(), to="t@school.example", delivery_id="d-4")


def test_email_failures_are_delivery_failures(smtp_server: SmtpServer) -> None:
    down = NotifySettings(REPORTING_SMTP_HOST="127.0.0.1", REPORTING_SMTP_PORT=free_port())
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"SMTP 127\.0\.0\.1:\d+: ConnectionRefusedError"):
        send_email(down, _notice(), to="t@school.example", delivery_id="d")
    assert time.monotonic() - started < 2
    with pytest.raises(DeliveryFailed, match="not a valid e-mail address"):
        send_email(_smtp(smtp_server), _notice(), to="t@x\r\nBcc: evil@x.org", delivery_id="d")
    with pytest.raises(DeliveryFailed, match="STARTTLS"):
        send_email(
            _smtp(smtp_server, REPORTING_SMTP_STARTTLS=True),
            _notice(),
            to="t@x.org",
            delivery_id="d",
        )
    assert smtp_server.messages == []


def test_address_check() -> None:
    assert is_valid_address("мария@школа.рф")
    assert is_valid_address("a.b+c@school.example")
    for bad in ("", "no-at.example", "a@b", "a b@c.org", "a@b.org, c@d.org", "<a@b.org>"):
        assert not is_valid_address(bad), bad


# --- webhook -----------------------------------------------------------------------------------


def _hook(capture: HttpCapture) -> NotifySettings:
    return NotifySettings(
        REPORTING_WEBHOOK_URL=capture.url("/hooks/reports?token=xyz"),
        REPORTING_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )


def test_webhook_is_signed_over_the_exact_body(http_capture: HttpCapture) -> None:
    with httpx.Client() as client:
        send_webhook(client, _hook(http_capture), _notice(), delivery_id="d-9")

    [request] = http_capture.wait_for(1)
    assert request.method == "POST" and request.path == "/hooks/reports?token=xyz"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-reporting-event"] == "export.ready"
    assert request.headers["x-reporting-delivery"] == "d-9"
    assert request.headers["idempotency-key"] == "d-9"
    # What a receiver does: HMAC the raw bytes with the shared secret.
    expected = hmac_hex(WEBHOOK_SECRET, request.body)
    assert request.headers["x-reporting-signature"] == f"sha256={expected}"
    assert verify(request.body, WEBHOOK_SECRET, request.headers["x-reporting-signature"])
    assert not verify(request.body + b" ", WEBHOOK_SECRET, request.headers["x-reporting-signature"])
    assert request.json() == {
        "event": "export.ready",
        "export_id": EXPORT_ID,
        "group_id": "7a",
        "format": "pdf",
        "status": "ready",
        "download_url": LINK,
        "url_expires_at": "2026-11-28T15:00:00Z",
        "error": None,
        "request_id": "req-42",
    }


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_webhook_body_for_a_failure() -> None:
    notice = _notice(status="failed", download_url=None, url_expires_at=None, error="ошибка")
    body = webhook_body(notice)
    assert json.loads(body)["event"] == "export.failed"
    assert "ошибка".encode() in body  # UTF-8, not \u escapes
    assert sign(body, "s") == sign(webhook_body(notice), "s")  # deterministic: retries match


def test_webhook_failures_carry_the_receivers_wish(http_capture: HttpCapture) -> None:
    http_capture.fail_next(1, status=429, headers={"Retry-After": "120"})
    with httpx.Client() as client, pytest.raises(DeliveryFailed) as failure:
        send_webhook(client, _hook(http_capture), _notice(), delivery_id="d")
    assert failure.value.retry_after == 120
    assert "HTTP 429" in str(failure.value)
    assert "token=xyz" not in str(failure.value)  # the URL's query may hold a secret

    down = NotifySettings(
        REPORTING_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hook",
        REPORTING_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    with httpx.Client() as client, pytest.raises(DeliveryFailed, match="ConnectError"):
        send_webhook(client, down, _notice(), delivery_id="d")


# --- Telegram ----------------------------------------------------------------------------------


def _telegram(capture: HttpCapture, chat_id: str = "-100123") -> NotifySettings:
    return NotifySettings(
        REPORTING_TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        REPORTING_TELEGRAM_CHAT_ID=chat_id,
        REPORTING_TELEGRAM_API_BASE=capture.url("/tg/"),
    )


def test_telegram_sends_the_text_to_the_chat(http_capture: HttpCapture) -> None:
    with httpx.Client() as client:
        send_telegram(client, _telegram(http_capture), _notice(), chat_id="-100123")
        send_telegram(client, _telegram(http_capture), _notice(locale="en"), chat_id="@reports")

    first, second = http_capture.wait_for(2)
    assert first.method == "POST"
    assert first.path == f"/tg/bot{BOT_TOKEN}/sendMessage"
    assert first.json() == {"chat_id": -100123, "text": messages.text(_notice())}
    assert first.json()["text"].startswith("Отчёт по группе «7А» в формате PDF готов.")
    assert second.json()["chat_id"] == "@reports"
    assert "Download: " + LINK in second.json()["text"]


def test_telegram_refusals_are_failures_without_the_token(http_capture: HttpCapture) -> None:
    http_capture.fail_next(
        1,
        status=429,
        body='{"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 7",'
        ' "parameters": {"retry_after": 7}}',
    )
    with httpx.Client() as client, pytest.raises(DeliveryFailed) as failure:
        send_telegram(client, _telegram(http_capture), _notice(), chat_id="1")
    assert failure.value.retry_after == 7
    assert "Too Many Requests" in str(failure.value)

    http_capture.respond(200, '{"ok": false, "description": "Bad Request: chat not found"}')
    with httpx.Client() as client, pytest.raises(DeliveryFailed, match="chat not found"):
        send_telegram(client, _telegram(http_capture), _notice(), chat_id="1")

    down = NotifySettings(
        REPORTING_TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        REPORTING_TELEGRAM_API_BASE=f"http://127.0.0.1:{free_port()}",
    )
    with httpx.Client() as client, pytest.raises(DeliveryFailed) as refused:
        send_telegram(client, down, _notice(), chat_id="1")
    assert "ConnectError" in str(refused.value)
    assert BOT_TOKEN not in str(refused.value)
