"""Telegram through the bot API: `POST {base}/bot{token}/sendMessage` with `{chat_id, text}`."""

import re

import httpx

from reporting.notify import messages
from reporting.notify.notice import DeliveryFailed, ExportNotice
from reporting.settings import NotifySettings

_NUMERIC = re.compile(r"-?\d+")


def send_telegram(
    client: httpx.Client, settings: NotifySettings, notice: ExportNotice, *, chat_id: str
) -> None:
    """Send the notice's text; DeliveryFailed unless Telegram answers `{"ok": true}`."""
    if settings.telegram_bot_token is None:
        raise DeliveryFailed("Telegram is not configured (REPORTING_TELEGRAM_BOT_TOKEN is unset)")
    token = settings.telegram_bot_token.get_secret_value()
    url = f"{settings.telegram_api_base}/bot{token}/sendMessage"
    # Numeric ids go as numbers, channel names ("@school_reports") as strings.
    chat: int | str = int(chat_id) if _NUMERIC.fullmatch(chat_id) else chat_id
    try:
        response = client.post(url, json={"chat_id": chat, "text": messages.text(notice)})
    except httpx.HTTPError as error:
        # The token is part of the URL: never let it reach the outbox or the logs.
        reason = f"{type(error).__name__}: {error}".replace(token, "<token>")
        raise DeliveryFailed(f"Telegram API {settings.telegram_api_base}: {reason}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code == 200 and isinstance(answer, dict) and answer.get("ok") is True:
        return
    description = answer.get("description") if isinstance(answer, dict) else None
    retry_after = None
    if isinstance(answer, dict) and isinstance(answer.get("parameters"), dict):
        value = answer["parameters"].get("retry_after")
        retry_after = float(value) if isinstance(value, int | float) else None
    reason = f"Telegram API answered HTTP {response.status_code}: {description or response.reason_phrase}"
    raise DeliveryFailed(reason.replace(token, "<token>"), retry_after=retry_after)
