"""What the CSV and XLSX tables share: the header, and the neutralisation of text that a
spreadsheet would run as a formula (content.iter_csv_records applies the same rule in SQL)."""

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
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """Prefix `'` to text a spreadsheet would evaluate. Only text cells go through this:
    numbers (a negative score) stay numbers."""
    return "'" + text if text.startswith(FORMULA_START) else text
