"""Notifications through the `notification_outbox` table: at least once, never in the way.

The export worker calls `enqueue()` in the same transaction that marks the export ready or
failed, so a notice exists exactly when the status does. `deliver_due()` then sends what is due,
one row per transaction (`FOR UPDATE SKIP LOCKED`, so several workers share the work), and on a
failure schedules the next attempt with exponential backoff and jitter until
REPORTING_NOTIFY_MAX_ATTEMPTS. A channel's failure is recorded in the row, never raised.
"""

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from reporting import __version__, metrics
from reporting.notify.email import is_valid_address, send_email
from reporting.notify.notice import DeliveryFailed, ExportNotice
from reporting.notify.telegram import send_telegram
from reporting.notify.webhook import send_webhook
from reporting.settings import NotifySettings

__all__ = ["DeliveryReport", "ExportNotice", "deliver_due", "enqueue", "planned_channels"]

log = logging.getLogger(__name__)

Channel = Literal["email", "telegram", "webhook"]
MAX_ERROR_CHARS = 2000


def planned_channels(notice: ExportNotice, settings: NotifySettings) -> list[Channel]:
    """The channels that will carry `notice`: each one configured and with somewhere to go."""
    channels: list[Channel] = []
    if settings.smtp_host and notice.email:
        if is_valid_address(notice.email):
            channels.append("email")
        else:
            log.warning("not e-mailing export %s: bad address %r", notice.export_id, notice.email)
    if settings.telegram_bot_token is not None and (
        notice.telegram_chat_id or settings.telegram_chat_id
    ):
        channels.append("telegram")
    if settings.webhook_url:
        channels.append("webhook")
    return channels


_INSERT = """
INSERT INTO notification_outbox (export_id, event, channel, payload)
VALUES (%s, %s, %s, %s)
ON CONFLICT (export_id, event, channel) DO NOTHING
"""


def enqueue(conn: psycopg.Connection, notice: ExportNotice, settings: NotifySettings) -> int:
    """Queue one row per enabled channel in the caller's transaction; returns the rows added
    (a repeated call for the same export and event adds none)."""
    added = 0
    with conn.cursor() as cur:
        for channel in planned_channels(notice, settings):
            payload = notice.to_payload()
            if channel == "telegram":  # resolved now: the row says where it goes
                payload["telegram_chat_id"] = notice.telegram_chat_id or settings.telegram_chat_id
            cur.execute(_INSERT, (notice.export_id, notice.event, channel, Jsonb(payload)))
            added += cur.rowcount
    return added


@dataclass(frozen=True)
class DeliveryReport:
    """What one `deliver_due` call did: rows delivered, rows to retry later, rows given up."""

    sent: int = 0
    retrying: int = 0
    gave_up: int = 0

    @property
    def attempted(self) -> int:
        return self.sent + self.retrying + self.gave_up


_CLAIM = """
SELECT id, delivery_id::text, channel, payload, attempts
FROM notification_outbox
WHERE delivered_at IS NULL AND gave_up_at IS NULL
  AND next_attempt_at <= clock_timestamp()
  AND id <> ALL (%s)
ORDER BY next_attempt_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

_DELIVERED = """
UPDATE notification_outbox
SET attempts = attempts + 1, delivered_at = clock_timestamp(), last_error = NULL
WHERE id = %s
"""

# clock_timestamp(), not now(): a long-running transaction must not see time stand still.
_RETRY = """
UPDATE notification_outbox
SET attempts = attempts + 1, last_error = %s,
    next_attempt_at = clock_timestamp() + make_interval(secs => %s)
WHERE id = %s
"""

_GIVE_UP = """
UPDATE notification_outbox
SET attempts = attempts + 1, last_error = %s, gave_up_at = clock_timestamp()
WHERE id = %s
"""


def backoff_seconds(attempt: int, settings: NotifySettings, retry_after: float | None) -> float:
    """The wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped,
    plus up to 25 % jitter so a crowd of retries does not arrive at once; never less than what
    the receiver asked for (capped too)."""
    growth = 2.0 ** min(attempt - 1, 40)  # bounded: no float overflow at absurd attempt counts
    delay = min(settings.retry_base_secs * growth, settings.retry_max_secs)
    delay += random.uniform(0, delay / 4)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_secs))
    return delay


def deliver_due(
    conn: psycopg.Connection,
    settings: NotifySettings,
    *,
    limit: int = 50,
    refresh: Callable[[ExportNotice], ExportNotice] | None = None,
) -> DeliveryReport:
    """Send up to `limit` due notifications, each at most once in this call. Each row is
    claimed, sent and recorded in its own transaction (a savepoint if the caller has one open).
    `refresh` brings a notice up to date just before each attempt (a download link signed when
    the export became ready may have expired after an hour of retries). Raises only for
    database errors."""
    sent = retrying = gave_up = 0
    seen: list[int] = []
    with _HttpClient(settings) as http:
        while len(seen) < limit:
            own_transaction = conn.info.transaction_status == TransactionStatus.IDLE
            with conn.transaction():
                if own_transaction:
                    # Losing a "delivered" mark in a database crash only means one more send,
                    # which delivery ids make harmless; waiting for a WAL flush per row is not.
                    conn.execute("SET LOCAL synchronous_commit TO off")
                row = conn.execute(_CLAIM, (seen,)).fetchone()
                if row is None:
                    break
                row_id, delivery_id, channel, payload, attempts = row
                seen.append(row_id)
                attempt = attempts + 1
                error = _send(http, settings, channel, payload, delivery_id, refresh)
                if error is None:
                    conn.execute(_DELIVERED, (row_id,))
                    metrics.notifications_sent_total.labels(channel).inc()
                    sent += 1
                    continue
                metrics.notifications_failed_total.labels(channel).inc()
                reason = str(error)[:MAX_ERROR_CHARS] or type(error).__name__
                context = {
                    "export_id": payload.get("export_id"),
                    "channel": channel,
                    "attempt": attempt,
                    "request_id": payload.get("request_id"),
                }
                if attempt >= settings.max_attempts or not isinstance(error, DeliveryFailed):
                    conn.execute(_GIVE_UP, (reason, row_id))
                    log.error("notification given up: %s", reason, extra=context)
                    gave_up += 1
                else:
                    delay = backoff_seconds(attempt, settings, error.retry_after)
                    conn.execute(_RETRY, (reason, delay, row_id))
                    log.warning(
                        "notification failed, retry in %.0f s: %s", delay, reason, extra=context
                    )
                    retrying += 1
    return DeliveryReport(sent=sent, retrying=retrying, gave_up=gave_up)


def _send(
    http: "_HttpClient",
    settings: NotifySettings,
    channel: str,
    payload: dict[str, object],
    delivery_id: str,
    refresh: Callable[[ExportNotice], ExportNotice] | None,
) -> Exception | None:
    """Deliver one row; the failure, if any, comes back instead of being raised."""
    try:
        notice = ExportNotice.from_payload(payload)
    except (TypeError, ValueError) as error:  # a row no channel can ever send: give up
        return ValueError(f"unreadable outbox payload: {error}")
    try:
        if refresh is not None:
            notice = refresh(notice)
        if channel == "email":
            send_email(settings, notice, to=notice.email or "", delivery_id=delivery_id)
        elif channel == "telegram":
            chat_id = notice.telegram_chat_id or settings.telegram_chat_id or ""
            send_telegram(http.client, settings, notice, chat_id=chat_id)
        elif channel == "webhook":
            send_webhook(http.client, settings, notice, delivery_id=delivery_id)
        else:
            return ValueError(f"unknown channel {channel!r}")
    except DeliveryFailed as error:
        return error
    except Exception as error:
        # Anything else a channel throws is still that channel's failure: a notification must
        # never take the export worker down. Logged with its traceback, retried like the rest.
        log.exception("unexpected error from the %s channel", channel)
        return DeliveryFailed(f"{type(error).__name__}: {error}")
    return None


class _HttpClient:
    """One httpx client per `deliver_due` call, opened only if an HTTP channel needs it."""

    def __init__(self, settings: NotifySettings) -> None:
        self._settings = settings
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            timeout = self._settings.timeout_secs
            self._client = httpx.Client(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                follow_redirects=False,
                headers={"User-Agent": f"reporting/{__version__}"},
            )
        return self._client

    def __enter__(self) -> "_HttpClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.close()
