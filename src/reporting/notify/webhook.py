"""The webhook: `POST` JSON to REPORTING_WEBHOOK_URL, signed with REPORTING_WEBHOOK_SECRET.

Receivers verify `X-Reporting-Signature: sha256=<hex>` = HMAC-SHA256(secret, raw body) and drop
repeats by `X-Reporting-Delivery` (also sent as `Idempotency-Key`): delivery is at least once.
"""

import hashlib
import hmac
import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from reporting.notify.notice import DeliveryFailed, ExportNotice, iso_utc
from reporting.settings import NotifySettings

SIGNATURE_HEADER = "X-Reporting-Signature"
EVENT_HEADER = "X-Reporting-Event"
DELIVERY_HEADER = "X-Reporting-Delivery"


def webhook_body(notice: ExportNotice) -> bytes:
    """The exact bytes that are sent and signed (compact UTF-8 JSON)."""
    document = {
        "event": notice.event,
        "export_id": notice.export_id,
        "group_id": notice.group_id,
        "format": notice.format,
        "status": notice.status,
        "download_url": notice.download_url,
        "url_expires_at": iso_utc(notice.url_expires_at),
        "error": notice.error,
        "request_id": notice.request_id,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: the value of X-Reporting-Signature for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does (constant-time); here for tests and for receivers written in Python."""
    return hmac.compare_digest(sign(body, secret).encode(), header.encode())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    date = response.headers.get("Date")
    try:  # an HTTP date; naive or malformed ones are ignored
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def _display(url: str) -> str:
    """The URL without credentials or query, for errors and logs (webhook URLs often carry a
    token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def send_webhook(
    client: httpx.Client, settings: NotifySettings, notice: ExportNotice, *, delivery_id: str
) -> None:
    """POST the signed body; any 2xx is a delivery, anything else DeliveryFailed."""
    if not settings.webhook_url or settings.webhook_secret is None:
        raise DeliveryFailed("the webhook is not configured (REPORTING_WEBHOOK_URL is unset)")
    body = webhook_body(notice)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, settings.webhook_secret.get_secret_value()),
        EVENT_HEADER: notice.event,
        DELIVERY_HEADER: delivery_id,
        "Idempotency-Key": delivery_id,
    }
    try:
        response = client.post(settings.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as error:
        reason = f"{type(error).__name__}: {error}"
        raise DeliveryFailed(f"webhook {_display(settings.webhook_url)}: {reason}") from None
    if not response.is_success:
        raise DeliveryFailed(
            f"webhook {_display(settings.webhook_url)} answered HTTP {response.status_code}",
            retry_after=_retry_after(response),
        )
