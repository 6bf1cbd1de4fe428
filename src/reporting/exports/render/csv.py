"""CSV (CONTRACT §6): UTF-8 with BOM, comma, RFC 4180 quoting with CRLF line ends, `.` decimal
point, the fixed header. The cells arrive formatted and neutralised from PostgreSQL
(content.iter_csv_records); this module only writes them, batch by batch."""

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from reporting.exports.render.cells import HEADER


def render_csv(batches: Iterable[Sequence[Sequence[str]]], path: Path) -> int:
    """Write the table to `path` as it streams in; returns the number of data rows."""
    count = 0
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(HEADER)
        for batch in batches:
            writer.writerows(batch)
            count += len(batch)
    return count
