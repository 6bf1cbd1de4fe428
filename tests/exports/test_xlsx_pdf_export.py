"""XLSX and PDF exports end to end, read back with openpyxl and pypdf and compared with an
independent computation from the raw attempts."""

import io
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import openpyxl
import psycopg
import pypdf

from tests.builders import make_stat
from tests.exports.conftest import EVIL_NAME, GROUP, GROUP_NAME, SEPTEMBER, Deployment, School
from tests.exports.reference import expected_kpis, expected_rows, selected

HEADER = [
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
]


async def _file(deployment: Deployment, body: dict[str, Any], content_type: str) -> bytes:
    export = await deployment.produce(deployment.teacher(), body)
    assert export["status"] == "ready", export
    response = await deployment.download(export["download_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)
    return response.content


def _close_in_time(got: datetime, want: datetime) -> bool:
    return abs(got - want.astimezone(UTC).replace(tzinfo=None)) < timedelta(milliseconds=1)


async def test_xlsx_is_a_typed_table_plus_a_summary(deployment: Deployment, school: School) -> None:
    content = await _file(
        deployment,
        {"format": "xlsx", "period": SEPTEMBER, "topic_ids": []},
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
    book = openpyxl.load_workbook(io.BytesIO(content))
    assert book.sheetnames == ["Данные", "Сводка"]
    sheet = book["Данные"]
    rows = list(sheet.iter_rows(values_only=True))
    assert list(rows[0]) == HEADER
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:O{len(rows)}"
    want = expected_rows(
        school.attempts,
        group_id=GROUP,
        group_name=GROUP_NAME,
        students=school.students,
        topics=school.topics,
        start=date(2026, 9, 1),
        end=date(2026, 9, 30),
        topic_ids=[],
    )
    assert len(rows) - 1 == len(want)
    for got, expected in zip(rows[1:], want, strict=True):
        inert = "'" + expected.display_name if expected.display_name[0] in "=+-@" else None
        assert got[:7] == (
            expected.group_id,
            expected.group_name,
            expected.user_id,
            inert or expected.display_name,
            expected.topic_id,
            expected.topic_name,
            expected.level_id,
        )
        assert got[7] == expected.attempts and got[8] == expected.correct
        assert math.isclose(got[9], float(expected.accuracy))
        assert math.isclose(got[10], expected.score, abs_tol=1e-9)
        assert got[11] == expected.hints_used
        assert math.isclose(got[12], expected.avg_time_seconds, rel_tol=1e-12)
        assert isinstance(got[13], datetime) and _close_in_time(got[13], expected.first_attempt_at)
        assert isinstance(got[14], datetime) and _close_in_time(got[14], expected.last_attempt_at)

    # Nothing is a formula: the hostile name is a string cell, the negative score a number.
    for row in sheet.iter_rows(min_row=2):
        assert all(cell.data_type != "f" for cell in row)
        if row[2].value == "u-evil":
            assert row[3].data_type == "s" and row[3].value == "'" + EVIL_NAME
        if row[2].value == "u-neg":
            assert row[10].data_type == "n" and row[10].value < 0

    summary = {r[0]: r[1] for r in book["Сводка"].iter_rows(values_only=True) if r[0]}
    assert summary["Группа"] == f"{GROUP_NAME} ({GROUP})"
    assert summary["Период"] == "2026-09-01 — 2026-09-30"
    assert summary["Темы"] == "все темы"
    kpis = expected_kpis(
        selected(
            school.attempts,
            group_id=GROUP,
            students=school.students,
            start=date(2026, 9, 1),
            end=date(2026, 9, 30),
            topic_ids=[],
        )
    )
    assert summary["Попыток"] == kpis.total_attempts
    assert summary["Активных учеников"] == kpis.total_users
    assert math.isclose(summary["Средняя точность"], kpis.avg_accuracy)
    assert math.isclose(summary["Средний балл ученика"], kpis.avg_score)
    assert math.isclose(summary["Доля попыток с подсказками"], kpis.hint_usage_rate)
    assert math.isclose(summary["Подсказок на попытку"], kpis.avg_hints)
    assert math.isclose(summary["Среднее время попытки, с"], kpis.avg_time_seconds)


def _text(content: bytes) -> tuple[str, pypdf.PdfReader]:
    reader = pypdf.PdfReader(io.BytesIO(content))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return re.sub(r"\s+", " ", text), reader


def _ru_percent(share: float) -> str:
    return f"{share * 100:.1f}".replace(".", ",") + " %"


async def test_pdf_in_russian_has_cyrillic_text_kpis_tables_and_page_numbers(
    deployment: Deployment, school: School
) -> None:
    content = await _file(
        deployment,
        {"format": "pdf", "period": SEPTEMBER, "topic_ids": ["t-frac", "t-geo"]},
        "application/pdf",
    )
    text, reader = _text(content)
    pages = len(reader.pages)
    assert f"Отчёт по группе «{GROUP_NAME}»" in text
    assert "Период: 2026-09-01 — 2026-09-30" in text
    assert "Темы: Дроби, Геометрия" in text
    assert "Данные аналитики на: ещё не рассчитаны" in text
    assert re.search(r"Сформирован: \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", text)
    for number in range(1, pages + 1):
        assert f"Стр. {number} из {pages}" in text
    chosen = selected(
        school.attempts,
        group_id=GROUP,
        students=school.students,
        start=date(2026, 9, 1),
        end=date(2026, 9, 30),
        topic_ids=["t-frac", "t-geo"],
    )
    kpis = expected_kpis(chosen)
    assert f"Попыток {kpis.total_attempts}" in text
    assert f"Активных учеников {kpis.total_users}" in text
    assert f"Средняя точность {_ru_percent(kpis.avg_accuracy)}" in text
    assert "Средняя точность по темам, %" in text  # the chart's title
    assert "По темам" in text and "По ученикам" in text
    for user_id in {a.user_id for a in chosen}:
        assert school.students[user_id].display_name in text
    assert "Уравнения" not in text  # filtered out
    # The per-topic table names levels, each word whole (a narrow column broke «Натуральн/ые»).
    assert "Натуральные" in text
    assert not re.search(r"\d\.\d", text), "a decimal point in Russian (the chart's labels?)"
    resources: Any = reader.pages[0]["/Resources"]
    fonts = resources["/Font"]
    names = {str(fonts[f].get_object()["/BaseFont"]) for f in fonts}
    assert any("PTSans" in name for name in names), names


async def test_pdf_in_english_says_when_the_data_was_computed(
    deployment: Deployment, school: School
) -> None:
    computed_at = datetime(2026, 10, 2, 3, 4, 5, tzinfo=UTC)
    with psycopg.connect(deployment.url) as conn:
        make_stat(conn, "group", GROUP, computed_at=computed_at)
    content = await _file(
        deployment,
        {"format": "pdf", "period": SEPTEMBER, "locale": "en"},
        "application/pdf",
    )
    text, reader = _text(content)
    assert f"Group report: {GROUP_NAME}" in text
    assert "Analytics data as of: 2026-10-02 03:04:05 UTC" in text
    assert "Topics: all topics" in text
    assert f"Page 1 of {len(reader.pages)}" in text


async def test_pdf_of_an_empty_period_says_so(deployment: Deployment, school: School) -> None:
    content = await _file(
        deployment,
        {"format": "pdf", "period": {"from": "2020-01-01", "to": "2020-01-31"}},
        "application/pdf",
    )
    text, _ = _text(content)
    assert "За выбранный период попыток нет." in text
    assert "Попыток 0" in text
    assert "Средняя точность —" in text  # not 0,0 %: no attempt, no mean


async def test_xlsx_of_an_empty_period_has_no_means_rather_than_zeros(
    deployment: Deployment, school: School
) -> None:
    content = await _file(
        deployment,
        {"format": "xlsx", "period": {"from": "2020-01-01", "to": "2020-01-31"}},
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )
    book = openpyxl.load_workbook(io.BytesIO(content))
    assert list(book["Данные"].iter_rows(values_only=True))[1:] == []
    summary = {row[0]: row[1] for row in book["Сводка"].iter_rows(values_only=True) if row[0]}
    assert summary["Попыток"] == 0 and summary["Активных учеников"] == 0
    assert summary["Средняя точность"] == "—"  # not 0 %: no attempt, no mean
    assert summary["Среднее время попытки, с"] == "—"
