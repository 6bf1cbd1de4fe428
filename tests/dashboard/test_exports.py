"""Exports from the dashboard: the filters drive the request, the page follows the export to
its download link, the downloaded file reflects the filters, and the hourly limit shows itself.
The real API and a real `export-worker` process produce the files."""

import csv
import io
import json
import re
import subprocess
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer
from tests.dashboard.pages import sign_in, wait_for_group
from tests.dashboard.school import TEACHER_GROUPS, TOPICS, School

EXPORT_TIMEOUT_MS = 20_000
EXPORT_POLL = re.compile(r".*/stats/exports/[^/?]+$")  # one export's status, not the list

pytestmark = pytest.mark.slow


def set_filters(page: Page, *, topics: list[str] | None, since: date, until: date) -> None:
    """`topics=None`: all topics."""
    all_topics = page.locator("#topics-all")
    if topics is None:
        all_topics.check()
    else:
        all_topics.uncheck()
        for box in page.locator('input[name="topic"]').all():
            box.set_checked(box.get_attribute("value") in topics)
    page.locator("#period-from").fill(since.isoformat())
    page.locator("#period-to").fill(until.isoformat())


def export_and_download(page: Page, fmt: str, count_before: int) -> bytes:
    page.locator(f'input[name="format"][value="{fmt}"]').check()
    page.locator("#export-submit").click()
    items = page.locator("#export-list .export-item")
    expect(items).to_have_count(count_before + 1)
    newest = items.first
    expect(newest).to_have_attribute("data-status", "ready", timeout=EXPORT_TIMEOUT_MS)
    expect(page.locator("#export-status")).to_contain_text(f"Отчёт {fmt.upper()} готов")
    link = newest.locator("a.download")
    expect(link).to_have_text(f"Скачать {fmt.upper()}")
    with page.expect_download() as download_info:
        link.click()
    path = download_info.value.path()
    assert path is not None
    return path.read_bytes()


def spend_the_quota_elsewhere(server: LiveServer, token: str) -> None:
    """The hour's five exports, requested through the API as another tab or a script would."""
    url = server.url(f"/stats/groups/{TEACHER_GROUPS[0]}/export")
    body = {"topic_ids": [], "period": {"from": "2026-01-01", "to": "2026-01-31"}, "format": "csv"}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        assert [client.post(url, json=body).status_code for _ in range(5)] == [202] * 5


def rows_of(content: bytes) -> list[dict[str, str]]:
    assert content.startswith(b"\xef\xbb\xbf"), "the CSV starts with a UTF-8 BOM"
    return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))


def test_filters_change_what_is_exported_and_the_download_reflects_them(
    page: Page,
    live_server: LiveServer,
    school: School,
    export_worker: subprocess.Popen[bytes],
    make_token: TokenFactory,
    artifacts_dir: Path,
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-export"))
    wait_for_group(page, "7А класс")
    expect(page.locator("#export-list")).to_contain_text("Выгрузок пока нет")
    today = school.now.date()

    # One topic, the last week: only that topic's recent attempts, only students active then.
    set_filters(page, topics=["T1"], since=today - timedelta(days=7), until=today)
    week = rows_of(export_and_download(page, "csv", 0))
    recent = [
        a
        for a in school.attempts_of(group_id="g-a", topic_id="T1")
        if a.attempted_at.date() >= today - timedelta(days=7)
    ]
    assert {r["topic_id"] for r in week} == {"T1"}
    assert {r["group_id"] for r in week} == {"g-a"}
    assert Counter({r["user_id"]: int(r["attempts"]) for r in week}) == Counter(
        a.user_id for a in recent
    )
    assert "a5" not in {r["user_id"] for r in week}  # idle for ten days
    assert week[0]["topic_name"] == "Дроби"

    # Every topic, two months: all of 7А's attempts.
    set_filters(page, topics=None, since=today - timedelta(days=60), until=today)
    everything = rows_of(export_and_download(page, "csv", 1))
    assert {r["topic_id"] for r in everything} == set(TOPICS)
    assert sum(int(r["attempts"]) for r in everything) == len(school.attempts_of(group_id="g-a"))
    assert {r["display_name"] for r in everything} >= {"Дина Соколова", "Вера Кузнецова"}

    # The list keeps both, newest first, with what each covered.
    summaries = page.locator("#export-list .export-summary").all_inner_texts()
    assert summaries[0].startswith("CSV · все темы")
    assert summaries[1].startswith("CSV · 1 тема")
    page.locator("section[aria-labelledby=export-title]").screenshot(
        path=str(artifacts_dir / "dashboard-export.png")
    )


def test_xlsx_and_pdf_download_too(
    page: Page,
    live_server: LiveServer,
    school: School,
    export_worker: subprocess.Popen[bytes],
    make_token: TokenFactory,
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-formats"))
    wait_for_group(page, "7А класс")
    set_filters(
        page,
        topics=["T2", "T3"],
        since=school.now.date() - timedelta(days=60),
        until=school.now.date(),
    )
    assert export_and_download(page, "xlsx", 0).startswith(b"PK")
    assert export_and_download(page, "pdf", 1).startswith(b"%PDF")


def test_the_fifth_export_in_an_hour_spends_the_quota_and_the_button_waits(
    page: Page,
    live_server: LiveServer,
    school: School,
    export_worker: subprocess.Popen[bytes],
    make_token: TokenFactory,
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-rate"))
    wait_for_group(page, "7А класс")
    quota = page.locator("#export-quota")
    status = page.locator("#export-status")
    submit = page.locator("#export-submit")
    expect(quota).to_have_text("Осталось выгрузок на этот час: 5 из 5.")
    # The page's polls of each export are held until the five are requested: the export worker
    # runs, and an earlier export announced ready would replace the request's own notice.
    held: list[Route] = []
    released = False

    def hold(route: Route) -> None:
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route(EXPORT_POLL, hold)
    for made in range(1, 5):
        submit.click()
        expect(page.locator("#export-list .export-item")).to_have_count(made)
        expect(status).to_have_text("Отчёт CSV поставлен в очередь.")
        expect(quota).to_have_text(f"Осталось выгрузок на этот час: {5 - made} из 5.")
        expect(submit).to_be_enabled()

    # The fifth spends the quota: the button waits, and the status says until when.
    submit.click()
    expect(page.locator("#export-list .export-item")).to_have_count(5)
    expect(quota).to_have_text("Лимит выгрузок на этот час исчерпан.")
    expect(submit).to_be_disabled()
    expect(status.locator("p")).to_have_count(2)
    expect(status.locator("p").first).to_have_text("Отчёт CSV поставлен в очередь.")
    expect(status.locator("p").last).to_contain_text("Лимит выгрузок исчерпан (5 в час)")
    text = status.inner_text()
    assert re.search(r"будет доступна через (\d+ минут[аы]?|60 минут|1 час)", text), text

    # The earlier exports becoming ready are announced, and the limit stays explained under it.
    released = True
    for route in held:
        route.continue_()
    expect(page.locator("#export-list .export-item[data-status=ready]")).to_have_count(5)
    expect(status.locator("p")).to_have_count(2)
    expect(status.locator("p").first).to_have_text("Отчёт CSV готов.")
    expect(status.locator("p").last).to_contain_text("Лимит выгрузок исчерпан (5 в час)")
    expect(submit).to_be_disabled()


def test_a_quota_spent_elsewhere_gets_the_rate_limit_message(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    token = make_token("teacher", groups=TEACHER_GROUPS, sub="t-elsewhere")
    sign_in(page, live_server, token)
    wait_for_group(page, "7А класс")
    quota = page.locator("#export-quota")
    expect(quota).to_have_text("Осталось выгрузок на этот час: 5 из 5.")
    # Another tab (or a script) of the same teacher spends the hour's five meanwhile.
    spend_the_quota_elsewhere(live_server, token)
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        page.locator("#export-submit").click()
        status = page.locator("#export-status")
        expect(status).to_contain_text("Лимит выгрузок исчерпан (5 в час)")
        assert re.search(
            r"будет доступна через (\d+ минут[аы]?|60 минут|1 час)", status.inner_text()
        )
        expect(page.locator("#export-submit")).to_be_disabled()
        expect(quota).to_have_text("Лимит выгрузок на этот час исчерпан.")
        # Nothing was created by the refused request; the list shows the five made elsewhere.
        mine = client.get(live_server.url("/stats/exports")).json()
        assert len(mine) == 5
    expect(page.locator("#export-list .export-item")).to_have_count(5)


def test_bad_filters_get_a_clear_message_and_no_request(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-bad"))
    wait_for_group(page, "7А класс")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    page.locator("#topics-all").uncheck()
    page.locator("#export-submit").click()
    expect(page.locator("#export-status")).to_have_text(
        "Выберите хотя бы одну тему или отметьте «Все темы»."
    )
    page.locator('input[name="topic"][value="T2"]').check()
    page.locator("#period-from").fill("2026-10-10")
    page.locator("#period-to").fill("2026-10-01")
    page.locator("#export-submit").click()
    expect(page.locator("#export-status")).to_have_text("Дата начала периода позже даты окончания.")
    # The field is marked for assistive technology and has the focus.
    expect(page.locator("#period-from")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#period-from")).to_be_focused()
    assert posts == []
    # Nothing the teacher chose was lost.
    expect(page.locator('input[name="topic"][value="T2"]')).to_be_checked()
    expect(page.locator("#period-from")).to_have_value("2026-10-10")


def test_a_refused_export_says_so(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """The export request rewritten to a foreign group: the page shows the 403, nothing else."""

    def to_foreign(route: Route) -> None:
        route.continue_(url=route.request.url.replace("/groups/g-a/", "/groups/g-x/"))

    page.route("**/stats/groups/g-a/export", to_foreign)
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-refused"))
    wait_for_group(page, "7А класс")
    page.locator("#export-submit").click()
    expect(page.locator("#export-status")).to_contain_text("Ошибка 403")
    expect(page.locator("#export-status")).to_contain_text("Нет доступа")
    expect(page.locator("#export-list .export-item")).to_have_count(0)


def test_signing_out_leaves_nothing_of_the_previous_teacher_in_the_export_panel(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """Two teachers of the same groups, one after the other in one tab (no reload between)."""
    first = make_token("teacher", groups=TEACHER_GROUPS, sub="t-leaving")
    sign_in(page, live_server, first)
    wait_for_group(page, "7А класс")
    spend_the_quota_elsewhere(live_server, first)
    page.locator("#export-submit").click()  # a 429: the panel lists the five and waits
    expect(page.locator("#export-list .export-item")).to_have_count(5)
    expect(page.locator("#export-submit")).to_be_disabled()

    page.locator("#sign-out").click()
    page.locator("#token-input").fill(make_token("teacher", groups=TEACHER_GROUPS, sub="t-next"))
    page.locator("#signin-form button[type=submit]").click()
    wait_for_group(page, "7А класс")
    expect(page.locator("#export-quota")).to_have_text("Осталось выгрузок на этот час: 5 из 5.")
    expect(page.locator("#export-list")).to_have_text("Выгрузок пока нет.")
    expect(page.locator("#export-list a.download")).to_have_count(0)
    expect(page.locator("#export-submit")).to_be_enabled()
    expect(page.locator("#export-status")).not_to_contain_text("Лимит")


def test_a_request_the_server_refuses_is_explained_in_the_readers_language(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    def unknown_format(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "format": "docx"}))

    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-refused-422"))
    wait_for_group(page, "7А класс")
    status = page.locator("#export-status")
    # Years the API does not take are caught before anything is sent.
    page.locator("#period-from").fill("0001-01-01")
    page.locator("#export-submit").click()
    expect(status).to_have_text("Даты периода — с 1970 по 9998 год.")

    page.locator("#period-from").fill("2026-01-01")
    page.route("**/stats/groups/g-a/export", unknown_format)
    page.locator("#export-submit").click()
    expect(status).to_have_text("Проверьте фильтры: формат")
    page.locator('[data-lang="en"]').click()
    expect(status).to_have_text("Check the filters: format")
    expect(page.locator("#export-list .export-item")).to_have_count(0)
