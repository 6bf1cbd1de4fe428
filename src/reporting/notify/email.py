"""E-mail through SMTP (smtplib): a UTF-8 subject, a plain-text body and its HTML twin."""

import base64
import re
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from reporting.notify import messages
from reporting.notify.notice import DeliveryFailed, ExportNotice
from reporting.settings import NotifySettings

# Deliberately loose (one @, no spaces or control characters): the SMTP server is the judge;
# this only keeps header injection and obvious typos out of the outbox.
_ADDRESS = re.compile(
    r"[^@\s\x00-\x1f\x7f<>,;]+@[^@\s\x00-\x1f\x7f<>,;]+\.[^@\s\x00-\x1f\x7f<>,;]+"
)


def is_valid_address(address: str) -> bool:
    """Whether `address` looks like one plain e-mail address (use it to validate requests)."""
    return len(address) <= 254 and _ADDRESS.fullmatch(address) is not None


def render_email(notice: ExportNotice, *, sender: str, to: str, delivery_id: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = messages.subject(notice)
    message["From"] = sender
    message["To"] = to
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = sender.rpartition("@")[2] or "localhost"
    # make_msgid() without a domain asks DNS for our FQDN, which can stall for seconds.
    message["Message-ID"] = make_msgid(idstring=delivery_id, domain=domain)
    message["X-Reporting-Delivery"] = delivery_id
    message["X-Reporting-Event"] = notice.event
    message["Content-Language"] = notice.locale
    message.set_content(messages.text(notice))
    message.add_alternative(messages.html_body(notice), subtype="html")
    return message


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    try:
        smtp.login(user, password)
    except UnicodeEncodeError:
        # smtplib sends credentials as ASCII only; AUTH PLAIN (RFC 4616) carries UTF-8, and
        # Cyrillic passwords are not rare here.
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        code, answer = smtp.docmd("AUTH", "PLAIN " + token)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, answer) from None


def send_email(
    settings: NotifySettings, notice: ExportNotice, *, to: str, delivery_id: str
) -> None:
    """One SMTP session per message; DeliveryFailed with the server's answer on any failure."""
    if not settings.smtp_host:
        raise DeliveryFailed("e-mail is not configured (REPORTING_SMTP_HOST is unset)")
    if not is_valid_address(to):
        raise DeliveryFailed(f"not a valid e-mail address: {to!r}")
    message = render_email(notice, sender=settings.smtp_from, to=to, delivery_id=delivery_id)
    where = f"SMTP {settings.smtp_host}:{settings.smtp_port}"
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.timeout_secs
        ) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_user:
                password = (
                    settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                )
                _login(smtp, settings.smtp_user, password)
            smtp.send_message(message)
    except smtplib.SMTPResponseException as error:
        detail = (
            error.smtp_error.decode(errors="replace")
            if isinstance(error.smtp_error, bytes)
            else str(error.smtp_error)
        )
        raise DeliveryFailed(f"{where} answered {error.smtp_code}: {detail}") from error
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryFailed(f"{where}: {type(error).__name__}: {error}") from error
