"""CSV (CONTRACT §6): UTF-8 with BOM, comma, RFC 4180 quoting with CRLF line ends, `.` decimal
point, the fixed header, text cells neutralised against formula injection."""

import csv
from collections.abc import Iterable
from pathlib import Path

from reporting.exports.content import ExportRow
from reporting.exports.render.cells import HEADER, format_number, format_timestamp, neutralise


def csv_cells(row: ExportRow) -> list[str]:
    """One row as the CSV's cells: score to at most 4 decimals (trailing zeros dropped),
    accuracy with exactly 4 and avg_time_seconds with exactly 3."""
    return [
        neutralise(row.group_id),
        neutralise(row.group_name),
        neutralise(row.user_id),
        neutralise(row.display_name),
        neutralise(row.topic_id),
        neutralise(row.topic_name),
        neutralise(row.level_id),
        str(row.attempts),
        str(row.correct),
        format(row.accuracy, "f"),
        format_number(row.score, 4),
        str(row.hints_used),
        format(row.avg_time_seconds, "f"),
        format_timestamp(row.first_attempt_at),
        format_timestamp(row.last_attempt_at),
    ]


def render_csv(rows: Iterable[ExportRow], path: Path) -> int:
    """Write the table to `path` as it streams in; returns the number of data rows."""
    count = 0
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow(csv_cells(row))
            count += 1
    return count
