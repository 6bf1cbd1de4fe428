"""CSV exports end to end: API request -> worker -> signed link -> bytes, checked cell by cell
against an independent computation from the raw attempts."""

import csv
import io
import math
from datetime import UTC, date, datetime
from typing import Any

from tests.exports.conftest import EVIL_NAME, GROUP, GROUP_NAME, SEPTEMBER, Deployment, School
from tests.exports.reference import expected_rows, iso_z

HEADER = (
    "group_id,group_name,user_id,display_name,topic_id,topic_name,level_id,attempts,correct,"
    "accuracy,score,hints_used,avg_time_seconds,first_attempt_at,last_attempt_at"
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) else text


async def _csv(deployment: Deployment, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    export = await deployment.produce(deployment.teacher(), {"format": "csv", **body})
    assert export["status"] == "ready", export
    response = await deployment.download(export["download_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return response.content, export


def _check(
    raw: bytes,
    school: School,
    *,
    start: date | datetime,
    end: date | datetime,
    topic_ids: list[str],
) -> list[list[str]]:
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM"
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    lines = raw[3:].split(b"\r\n")
    assert lines[0].decode() == HEADER
    cells = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    expected = expected_rows(
        school.attempts,
        group_id=GROUP,
        group_name=GROUP_NAME,
        students=school.students,
        topics=school.topics,
        start=start,
        end=end,
        topic_ids=topic_ids,
    )
    data = cells[1:]
    assert len(data) == len(expected) > 0
    for got, want in zip(data, expected, strict=True):
        assert got[:7] == [
            _inert(want.group_id),
            _inert(want.group_name),
            _inert(want.user_id),
            _inert(want.display_name),
            _inert(want.topic_id),
            _inert(want.topic_name),
            _inert(want.level_id),
        ]
        assert got[7] == str(want.attempts)
        assert got[8] == str(want.correct)
        assert got[9] == f"{want.accuracy:.4f}"
        # score and avg_time_seconds unrounded (only accuracy is rounded, CONTRACT §6)
        assert math.isclose(float(got[10]), want.score, rel_tol=1e-12, abs_tol=1e-9)
        assert got[11] == str(want.hints_used)
        assert math.isclose(float(got[12]), want.avg_time_seconds, rel_tol=1e-12)
        assert got[13] == iso_z(want.first_attempt_at)
        assert got[14] == iso_z(want.last_attempt_at)
    return data


async def test_csv_matches_the_raw_attempts_cell_by_cell(
    deployment: Deployment, school: School
) -> None:
    raw, export = await _csv(deployment, {"topic_ids": [], "period": SEPTEMBER})
    _check(raw, school, start=date(2026, 9, 1), end=date(2026, 9, 30), topic_ids=[])
    key = f"exports/{GROUP}/{export['id']}.csv"
    assert deployment.objects() == [("reports/" if deployment.backend == "s3" else "") + key]


async def test_topic_filter_and_datetime_bounds_are_inclusive(
    deployment: Deployment, school: School
) -> None:
    start = datetime(2026, 9, 1, 0, 0, tzinfo=UTC)
    end = datetime(2026, 9, 30, 23, 59, 59, 999999, tzinfo=UTC)
    raw, export = await _csv(
        deployment,
        {
            "topic_ids": ["t-prob", "t-eq"],
            "period": {"from": "2026-09-01T00:00:00Z", "to": "2026-09-30T23:59:59.999999Z"},
        },
    )
    data = _check(raw, school, start=start, end=end, topic_ids=["t-prob", "t-eq"])
    assert {row[4] for row in data} == {"t-prob", "t-eq"}
    # The edge attempts at exactly 09-01 00:00 and 09-30 23:59:59.999999 are in, their
    # neighbours a microsecond outside are not.
    ivanova = next(row for row in data if row[2] == "u-ivanova" and row[4] == "t-prob")
    assert ivanova[13] == "2026-09-01T00:00:00Z"
    assert ivanova[14] == "2026-09-30T23:59:59.999999Z"
    assert export["filters"] == {
        "topic_ids": ["t-prob", "t-eq"],
        "period": {"from": "2026-09-01T00:00:00Z", "to": "2026-09-30T23:59:59.999999Z"},
    }


async def test_a_date_to_covers_its_whole_day_but_a_datetime_to_stops_there(
    deployment: Deployment, school: School
) -> None:
    whole_day, _ = await _csv(
        deployment, {"topic_ids": ["t-prob"], "period": {"from": "2026-09-30", "to": "2026-09-30"}}
    )
    _check(whole_day, school, start=date(2026, 9, 30), end=date(2026, 9, 30), topic_ids=["t-prob"])
    assert b"2026-09-30T23:59:59.999999Z" in whole_day
    cut = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
    morning, _ = await _csv(
        deployment,
        {"topic_ids": ["t-prob"], "period": {"from": "2026-09-30", "to": "2026-09-30T12:00:00Z"}},
    )
    assert b"2026-09-30T23:59:59.999999Z" not in morning
    if morning.count(b"\r\n") > 1:
        _check(morning, school, start=date(2026, 9, 30), end=cut, topic_ids=["t-prob"])


async def test_formula_text_is_inert_and_negative_scores_stay_numbers(
    deployment: Deployment, school: School
) -> None:
    raw, _ = await _csv(deployment, {"period": SEPTEMBER})
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))[1:]
    evil = [row for row in rows if row[2] == "u-evil"]
    assert evil and all(row[3] == "'" + EVIL_NAME for row in evil)
    at = [row for row in rows if row[2] == "u-at"]
    assert at and all(row[3] == "'@Смирнов" for row in at)
    negative = [row for row in rows if row[2] == "u-neg"]
    assert negative and all(row[10].startswith("-") and float(row[10]) < 0 for row in negative)
    # RFC 4180: the comma and the quotes of this name survive quoting.
    assert any(row[3] == 'Петров, "Пётр"' for row in rows)
    assert '"Петров, ""Пётр"""'.encode() in raw


async def test_the_other_groups_attempts_never_appear(
    deployment: Deployment, school: School
) -> None:
    raw, _ = await _csv(deployment, {"period": {"from": "2026-01-01", "to": "2026-12-31"}})
    text = raw.decode("utf-8-sig")
    assert "u-other" not in text and "7Б" not in text
    both = [row for row in csv.reader(io.StringIO(text)) if row[2] == "u-both"]
    in_group = [a for a in school.attempts if a.user_id == "u-both" and a.group_id == GROUP]
    assert sum(int(row[7]) for row in both) == len(in_group)
