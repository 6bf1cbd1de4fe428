"""The words of a notification, in Russian (the default) and English: one subject and one text
that e-mail and Telegram share, plus the e-mail's HTML version."""

import html
import re
from dataclasses import dataclass
from datetime import UTC

from reporting.notify.notice import ExportNotice, Failure

MAX_ERROR_CHARS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class _Words:
    ready_subject: str
    failed_subject: str
    ready_lead: str
    failed_lead: str
    download: str
    valid_until: str
    no_link: str
    reason: str
    try_again: str
    export_id: str
    date_format: str
    failures: dict[Failure, str]


_WORDS = {
    "ru": _Words(
        ready_subject="Отчёт готов: {group} ({format})",
        failed_subject="Отчёт не сформирован: {group} ({format})",
        ready_lead="Отчёт по группе «{group}» в формате {format} готов.",
        failed_lead="Не удалось сформировать отчёт по группе «{group}» в формате {format}.",
        download="Скачать",
        valid_until="Ссылка действительна до {when}; свежую можно получить в панели отчётов.",
        no_link="Ссылку на файл можно получить в панели отчётов.",
        reason="Причина",
        try_again="Попробуйте запросить отчёт ещё раз.",
        export_id="Номер выгрузки",
        date_format="%d.%m.%Y %H:%M UTC",
        failures={
            "storage": "хранилище файлов было недоступно",
            "too_large": "таблица не помещается на один лист Excel; выгрузите отчёт в CSV",
            "not_visible": "группа недоступна запросившему",
            "worker_stopped": "обработчик выгрузок несколько раз останавливался, не закончив её",
            "internal": "внутренняя ошибка сервиса",
        },
    ),
    "en": _Words(
        ready_subject="Report ready: {group} ({format})",
        failed_subject="Report failed: {group} ({format})",
        ready_lead="The {format} report for group “{group}” is ready.",
        failed_lead="The {format} report for group “{group}” could not be produced.",
        download="Download",
        valid_until="The link works until {when}; get a fresh one in the reports dashboard.",
        no_link="Get the link to the file in the reports dashboard.",
        reason="Reason",
        try_again="Please request the report again.",
        export_id="Export id",
        date_format="%Y-%m-%d %H:%M UTC",
        failures={
            "storage": "the file store was unavailable",
            "too_large": "the table does not fit one Excel sheet; export it as CSV",
            "not_visible": "the group is not visible to the requester",
            "worker_stopped": "the export worker stopped several times before finishing it",
            "internal": "an internal error of the service",
        },
    ),
}


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def _error(notice: ExportNotice) -> str:
    """Why, in the reader's language when the kind of failure is known."""
    if notice.failure is not None:
        return _WORDS[notice.locale].failures[notice.failure]
    error = (notice.error or "").strip() or "—"
    return error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "…"


def subject(notice: ExportNotice) -> str:
    """«Отчёт готов: 7А (PDF)» — one line whatever the group's name holds."""
    words = _WORDS[notice.locale]
    template = words.ready_subject if notice.status == "ready" else words.failed_subject
    return template.format(group=_one_line(notice.group_name), format=notice.format.upper())


def _lines(notice: ExportNotice) -> list[tuple[str, str | None]]:
    """(text, link) pairs: the body once, for the plain and the HTML rendering."""
    words = _WORDS[notice.locale]
    values = {"group": _one_line(notice.group_name), "format": notice.format.upper()}
    if notice.status == "failed":
        return [
            (words.failed_lead.format(**values), None),
            (f"{words.reason}: {_error(notice)}", None),
            (words.try_again, None),
        ]
    lines: list[tuple[str, str | None]] = [(words.ready_lead.format(**values), None)]
    if notice.download_url:
        lines.append((f"{words.download}: ", notice.download_url))
        if notice.url_expires_at is not None:
            when = notice.url_expires_at.astimezone(UTC).strftime(words.date_format)
            lines.append((words.valid_until.format(when=when), None))
    else:
        lines.append((words.no_link, None))
    return lines


def text(notice: ExportNotice) -> str:
    """The plain-text body (also the Telegram message)."""
    words = _WORDS[notice.locale]
    body = [f"{line}{link or ''}" for line, link in _lines(notice)]
    return "\n".join([*body, "", f"{words.export_id}: {notice.export_id}"])


def html_body(notice: ExportNotice) -> str:
    words = _WORDS[notice.locale]
    paragraphs = []
    for line, link in _lines(notice):
        anchor = f'<a href="{html.escape(link)}">{html.escape(link)}</a>' if link else ""
        paragraphs.append(f"<p>{html.escape(line)}{anchor}</p>")
    paragraphs.append(f"<p><small>{words.export_id}: {html.escape(notice.export_id)}</small></p>")
    return (
        f'<!doctype html><html lang="{notice.locale}"><meta charset="utf-8">'
        f"<body>{''.join(paragraphs)}</body></html>"
    )
