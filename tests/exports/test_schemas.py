"""The export body's period rules and the text neutralisation, as plain functions."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from reporting.exports.render.cells import neutralise
from reporting.exports.schemas import ExportCreate, ExportFilters, Period, download_filename


def _period(start: str, end: str) -> Period:
    return Period.model_validate({"from": start, "to": end})


def test_dates_are_whole_utc_days_both_inclusive() -> None:
    bounds = _period("2026-09-01", "2026-09-30").bounds()
    assert bounds.starts_at == datetime(2026, 9, 1, tzinfo=UTC)
    assert bounds.ends_before == datetime(2026, 10, 1, tzinfo=UTC)


def test_a_datetime_to_is_inclusive_and_offsets_become_utc() -> None:
    period = _period("2026-09-01T10:00:00+03:00", "2026-09-01T12:00:00")
    bounds = period.bounds()
    assert bounds.starts_at == datetime(2026, 9, 1, 7, tzinfo=UTC)
    assert bounds.ends_before == datetime(2026, 9, 1, 12, 0, 0, 1, tzinfo=UTC)  # naive = UTC
    assert period.model_dump(mode="json", by_alias=True) == {
        "from": "2026-09-01T07:00:00Z",
        "to": "2026-09-01T12:00:00Z",
    }


def test_the_same_day_is_a_valid_period_but_from_after_to_is_not() -> None:
    assert _period("2026-09-01", "2026-09-01").bounds().starts_at.day == 1
    _period("2026-09-01T12:00:00Z", "2026-09-01")  # a date `to` lasts until midnight
    with pytest.raises(ValidationError, match="must not be after"):
        _period("2026-09-02", "2026-09-01T23:59:59Z")
    with pytest.raises(ValidationError, match="between the years"):
        _period("0001-01-01", "2026-09-01")


def test_topic_ids_are_deduplicated_and_capped() -> None:
    body = ExportCreate.model_validate(
        {
            "topic_ids": ["a", "b", "a"],
            "period": {"from": "2026-09-01", "to": "2026-09-02"},
            "format": "csv",
        }
    )
    assert body.filters().topic_ids == ["a", "b"]
    with pytest.raises(ValidationError):
        ExportFilters.model_validate(
            {
                "topic_ids": [str(i) for i in range(1001)],
                "period": {"from": "2026-09-01", "to": "2026-09-02"},
            }
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+7 999", "'+7 999"),
        ("-минус", "'-минус"),
        ("@user", "'@user"),
        ("\tтаб", "'\tтаб"),
        ("\rcr", "'\rcr"),
        ("Иванова Анна", "Иванова Анна"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_text_that_a_spreadsheet_would_run_is_neutralised(text: str, expected: str) -> None:
    assert neutralise(text) == expected


def test_download_names_are_safe_file_names() -> None:
    filters = ExportFilters.model_validate(
        {"period": {"from": "2026-09-01", "to": "2026-09-30T10:00:00Z"}}
    )
    assert download_filename("7А/б:в", filters, "pdf") == "7А_б_в_2026-09-01_2026-09-30.pdf"
