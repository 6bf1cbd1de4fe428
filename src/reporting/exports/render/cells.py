"""Cell values shared by the CSV and XLSX renderers: the header, number and time formats, and
the neutralisation of text that a spreadsheet would run as a formula."""

from datetime import UTC, datetime

HEADER = (
    "group_id",
    "group_name",
    "user_id",
    "display_name",
    "topic_id",
    "topic_name",
    "level_id",
    "attempts",
    "correct",
    "accuracy",
    "score",
    "hints_used",
    "avg_time_seconds",
    "first_attempt_at",
    "last_attempt_at",
)

# Spreadsheets treat a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """Prefix `'` to text a spreadsheet would evaluate. Only text cells go through this:
    numbers (a negative score) stay numbers."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def format_number(value: float, places: int) -> str:
    """`.` decimal point, at most `places` decimals, no exponent, no trailing zeros."""
    text = f"{round(value, places):.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with `Z`: 2026-09-01T10:00:00Z (microseconds only when there are some)."""
    value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
