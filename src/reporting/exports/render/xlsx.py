"""XLSX (CONTRACT §6): the CSV's table as a typed sheet (numbers as numbers, times as Excel
datetimes, text always written as text and neutralised like the CSV), with a frozen header and
an autofilter, plus a summary sheet (group, period, filters, KPIs).

xlsxwriter's constant_memory mode flushes every row to disk as it is written, so a large export
streams through in constant memory (rows must then arrive in order, which they do).
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import xlsxwriter

from reporting.exports.content import ExportRow, Kpis, ReportHeader
from reporting.exports.render.cells import HEADER, neutralise
from reporting.exports.render.texts import Texts
from reporting.exports.schemas import ExportFilters

MAX_ROWS = 1_048_575  # Excel's sheet limit, minus the header


class TooManyRows(Exception):
    """The table does not fit one Excel sheet."""


_WIDTHS = (14, 24, 14, 28, 14, 28, 12, 10, 10, 10, 10, 11, 17, 20, 20)


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def render_xlsx(
    rows: Iterable[ExportRow],
    path: Path,
    *,
    header: ReportHeader,
    filters: ExportFilters,
    kpis: Kpis,
    generated_at: datetime,
    texts: Texts,
) -> int:
    """Write the workbook to `path`; returns the number of data rows."""
    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    try:
        bold = workbook.add_format({"bold": True})
        when = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        share = workbook.add_format({"num_format": "0.0000"})
        percent = workbook.add_format({"num_format": "0.0%"})
        decimal = workbook.add_format({"num_format": "0.000"})

        data = workbook.add_worksheet(texts.sheet_data)
        summary = workbook.add_worksheet(texts.sheet_summary)

        summary.set_column(0, 0, 34)
        summary.set_column(1, 1, 48)
        info: list[tuple[str, str]] = [
            (texts.group, f"{header.group_name} ({header.group_id})"),
            (texts.period, texts.period_text(filters.period)),
            (texts.topics, ", ".join(header.topic_names) or texts.all_topics),
            (texts.generated_at, texts.moment(generated_at)),
            (
                texts.data_as_of,
                texts.moment(header.data_as_of) if header.data_as_of else texts.not_computed,
            ),
        ]
        for r, (label, value) in enumerate(info):
            summary.write_string(r, 0, label, bold)
            summary.write_string(r, 1, neutralise(value))
        first = len(info) + 1
        summary.write_string(first, 0, texts.metric, bold)
        summary.write_string(first, 1, texts.value, bold)
        values = (
            (texts.total_attempts, kpis.total_attempts, None),
            (texts.total_users, kpis.total_users, None),
            (texts.avg_accuracy, kpis.avg_accuracy, percent),
            (texts.avg_score, kpis.avg_score, decimal),
            (texts.hint_usage_rate, kpis.hint_usage_rate, percent),
            (texts.avg_hints, kpis.avg_hints, decimal),
            (texts.avg_time_seconds, kpis.avg_time_seconds, decimal),
        )
        for r, (label, number, style) in enumerate(values, start=first + 1):
            summary.write_string(r, 0, label)
            if style is not None and not kpis.total_attempts:
                summary.write_string(r, 1, "—")  # a mean of nothing: no data, not 0 %
            else:
                summary.write_number(r, 1, number, style)

        for c, width in enumerate(_WIDTHS):
            data.set_column(c, c, width)
        data.freeze_panes(1, 0)
        for c, name in enumerate(HEADER):
            data.write_string(0, c, name, bold)
        count = 0
        for count, row in enumerate(rows, start=1):
            if count > MAX_ROWS:
                raise TooManyRows(f"the table has more than {MAX_ROWS} rows: export it as CSV")
            for c, text in enumerate(
                (
                    row.group_id,
                    row.group_name,
                    row.user_id,
                    row.display_name,
                    row.topic_id,
                    row.topic_name,
                    row.level_id,
                )
            ):
                data.write_string(count, c, neutralise(text))
            data.write_number(count, 7, row.attempts)
            data.write_number(count, 8, row.correct)
            data.write_number(count, 9, float(row.accuracy), share)
            data.write_number(count, 10, row.score)
            data.write_number(count, 11, row.hints_used)
            data.write_number(count, 12, float(row.avg_time_seconds), decimal)
            data.write_datetime(count, 13, _naive_utc(row.first_attempt_at), when)
            data.write_datetime(count, 14, _naive_utc(row.last_attempt_at), when)
        data.autofilter(0, 0, max(count, 1), len(HEADER) - 1)
    finally:
        workbook.close()
    return count
