"""The group view in Chromium: KPI cards, charts, tables, leaderboard, students needing
attention, the student drill-down, sorting by keyboard, the language switch, narrow screens."""

import re
from pathlib import Path

import psycopg
from playwright.sync_api import Page, Route, expect

from tests import builders
from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer, PageGuard
from tests.dashboard.pages import kpi, sign_in, wait_for_group
from tests.dashboard.school import FOREIGN_NAMES, TEACHER_GROUPS, TOPICS, School, metrics


def test_teacher_sees_the_group_figures_as_the_api_computes_them(
    page: Page,
    live_server: LiveServer,
    school: School,
    make_token: TokenFactory,
    artifacts_dir: Path,
    page_guard: PageGuard,
) -> None:
    page.set_viewport_size({"width": 1360, "height": 1000})
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-view"))
    wait_for_group(page, "7А класс")
    expected = metrics(school.attempts_of(group_id="g-a"))

    # Russian number formatting: comma decimals, non-breaking spaces.
    def ru_percent(value: float) -> str:
        return f"{value * 100:.1f}".replace(".", ",") + "\u00a0%"

    assert kpi(page, "accuracy") == ru_percent(expected["avg_accuracy"])
    assert kpi(page, "hints") == ru_percent(expected["hint_usage_rate"])
    assert kpi(page, "attempts") == str(expected["total_attempts"])
    assert kpi(page, "students") == str(expected["total_users"])
    assert kpi(page, "score") == f"{expected['avg_score']:.1f}".replace(".", ",")
    assert kpi(page, "time").startswith(f"{expected['avg_time_seconds']:.1f}".replace(".", ","))
    expect(page.locator("#freshness")).to_contain_text("Данные на")

    # One bar per topic, ten histogram bands, every table filled.
    expect(page.locator("#chart-topics svg rect.bar")).to_have_count(len(TOPICS))
    expect(page.locator("#chart-distribution svg rect.bar")).to_have_count(10)
    expect(page.locator("#chart-topics svg")).to_have_attribute("role", "img")
    expect(page.locator("#levels-table tbody tr")).to_have_count(2)
    # In course order, not alphabetical ("Второй" would come first).
    assert page.locator("#levels-table tbody th").all_inner_texts() == [
        "Первый уровень",
        "Второй уровень",
    ]
    expect(page.locator("#topics-table tbody tr")).to_have_count(len(TOPICS))
    expect(page.locator("#leaderboard tbody tr")).to_have_count(5)
    expect(page.locator("#leaderboard tbody tr").first).to_contain_text("Анна Смирнова")

    # Students needing attention: the weak, the hint-heavy, the idle, the one who never started.
    items = page.locator("#attention-list .attention-item")
    expect(items).to_have_count(4)
    expect(items.nth(0)).to_contain_text("Вера Кузнецова")
    expect(items.nth(0)).to_have_class(re.compile(r"\bseverity-alert\b"))
    expect(page.locator('#attention-list [data-user-id="a4"] .flag')).to_contain_text("Подсказок")
    expect(page.locator('#attention-list [data-user-id="a5"]')).to_have_class(
        re.compile(r"\bseverity-warning\b")
    )
    expect(page.locator('#attention-list [data-user-id="a6"]')).to_contain_text("Ни одной попытки")
    expect(page.locator('#attention-list [data-user-id="a1"]')).to_have_count(0)

    body = page.locator("body").inner_text()
    assert not any(name in body for name in FOREIGN_NAMES)
    page.screenshot(path=str(artifacts_dir / "dashboard-main.png"), full_page=True)
    # Live updates are off on this server: no event stream is asked for (only to be told 404).
    assert not [url for url in page_guard.requests if url.endswith("/events")]


def topic_names(page: Page) -> list[str]:
    return page.locator("#topics-table tbody th").all_inner_texts()


def test_tables_sort_from_the_keyboard(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    assert topic_names(page) == ["Геометрия", "Дроби", "Проценты", "Уравнения"]  # by name

    accuracy = page.locator("#topics-table thead th").nth(2)
    accuracy.locator("button").focus()
    page.keyboard.press("Enter")
    expect(accuracy).to_have_attribute("aria-sort", "descending")
    assert topic_names(page)[0] == "Дроби"  # the easy topic first
    page.keyboard.press("Space")
    expect(accuracy).to_have_attribute("aria-sort", "ascending")
    assert topic_names(page)[0] == "Проценты"
    expect(page.locator("#topics-table thead th").first).to_have_attribute("aria-sort", "none")

    # Tab moves on to the next header, which sorts in turn.
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#topics-table thead th").nth(3)).to_have_attribute(
        "aria-sort", "descending"
    )


def test_russian_by_default_english_on_request_and_remembered(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    expect(page.locator('[data-kpi="accuracy"] .kpi-label')).to_have_text("Точность")
    expect(page.locator("#leaderboard-title")).to_have_text("Рейтинг группы")

    page.get_by_role("button", name="EN", exact=True).click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("button", name="EN", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator('[data-kpi="accuracy"] .kpi-label')).to_have_text("Accuracy")
    expect(page.locator('[data-kpi="accuracy"] .kpi-value')).to_have_text("70.0%")
    expect(page.locator("#leaderboard-title")).to_have_text("Group leaderboard")
    expect(page.locator("#export-submit")).to_have_text("Create the report")
    expect(page.locator("#freshness")).to_contain_text("Data as of")
    expect(page.locator('#attention-list [data-user-id="a6"]')).to_contain_text("No attempts yet")
    assert page.title() == "Reporting & Analytics"
    # No Russian word is left in the interface's own texts (names and data aside).
    chrome = page.locator(
        "[data-i18n], .kpi-label, .kpi-note, #attention-hint, .flag, thead, #export-quota"
    )
    assert not any(re.search(r"[а-яё]", text, re.IGNORECASE) for text in chrome.all_inner_texts())

    page.reload()
    wait_for_group(page, "7А класс")
    expect(page.locator("#leaderboard-title")).to_have_text("Group leaderboard")
    page.get_by_role("button", name="RU", exact=True).click()
    expect(page.locator("#leaderboard-title")).to_have_text("Рейтинг группы")


def test_student_drill_down_compares_with_the_group(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    page.locator('#attention-list [data-user-id="a3"] button.link-button').click()

    dialog = page.locator("#student-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#student-title")).to_have_text("Вера Кузнецова")
    assert "student=a3" in page.url
    # One group visible: the card still says its totals count every group of the student's.
    expect(dialog.locator("#student-all-groups")).to_have_text(
        "Итоги ученика за всё время, включая попытки в других его группах;"
        " сравнение — с этой группой."
    )
    expect(dialog.locator(".mini-kpi").first).to_contain_text("30,0")
    expect(dialog.locator("#student-topics tbody tr")).to_have_count(len(TOPICS))
    expect(dialog.locator("#student-levels tbody tr")).to_have_count(2)
    # 30 % against the group's 70 %: every difference is a notable negative one.
    expect(dialog.locator("#student-topics .delta-neg")).to_have_count(len(TOPICS))
    expect(dialog.locator("#student-topics tbody tr").first).to_contain_text("−40,0 п. п.")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page).not_to_have_url(re.compile("student="))
    # The address alone opens it again (a bookmark, the back button).
    page.go_back()
    expect(page.locator("#student-title")).to_have_text("Вера Кузнецова")


def test_a_student_of_several_groups_is_said_to_have_totals_over_all_of_them(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """A progress summary counts every group of the student: the card says so, next to this
    group's figures. (The school's students are in one group each: the answer of the real API
    is given a second group on its way to the page.)"""

    def in_two_groups(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        route.fulfill(response=response, json={**body, "group_ids": [*body["group_ids"], "g-b"]})

    page.route("**/stats/users/a3", in_two_groups)
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    page.locator('#attention-list [data-user-id="a3"] button.link-button').click()
    expect(page.locator("#student-all-groups")).to_have_text(
        "Итоги по всем группам ученика (2), сравнение — с этой группой."
    )
    expect(page.locator("#attention-hint")).to_contain_text("в том числе в других его группах")


def test_teacher_picks_only_among_their_groups(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    options = page.locator("#group-select option")
    expect(options).to_have_count(2)
    assert options.all_inner_texts() == ["7А класс", "7Б класс"]
    expect(page.locator("#group-search")).to_be_hidden()
    page.locator("#group-select").select_option("g-b")
    wait_for_group(page, "7Б класс")
    assert page.url.endswith("#group=g-b")
    assert kpi(page, "students") == "2"


def test_admin_sees_every_group_and_searches_them(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("admin", sub="admin-view"))
    wait_for_group(page, "7А класс")
    expect(page.locator("#group-select option")).to_have_count(3)
    page.locator("#group-search").fill("9в")
    expect(page.locator("#group-select option")).to_have_count(2)  # the open group stays
    page.locator("#group-select").select_option("g-x")
    wait_for_group(page, "9В класс")
    expect(page.locator("#leaderboard")).to_contain_text(FOREIGN_NAMES[0])
    expect(page.locator("#whoami")).to_contain_text("Администратор")


def test_works_on_a_narrow_screen(
    page: Page,
    live_server: LiveServer,
    school: School,
    make_token: TokenFactory,
    artifacts_dir: Path,
) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
    # Charts are drawn at the width they get.
    svg_width = float(page.locator("#chart-topics svg").get_attribute("width") or 0)
    assert 250 <= svg_width <= 375
    page.screenshot(path=str(artifacts_dir / "dashboard-narrow.png"), full_page=True)


def test_controls_are_labelled_and_status_is_announced(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    # The first thing a keyboard reaches is the skip link, which shows itself when focused.
    first = page.evaluate(
        "document.querySelector('a[href], button, input, select, textarea').className"
    )
    assert first == "skip-link"
    page.locator(".skip-link").focus()
    expect(page.locator(".skip-link")).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => el.offsetParent !== null || el.closest('dialog[open]'))
            .filter((el) => {
                const named = el.labels?.length || el.getAttribute('aria-label')
                    || el.getAttribute('aria-labelledby') || el.textContent.trim();
                return !named;
            })
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    assert unlabelled == []
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#status")).to_contain_text("7А класс")
    expect(page.locator("#export-status")).to_have_attribute("aria-live", "polite")
    charts = page.locator("svg.svg-chart")
    expect(charts).to_have_count(2)
    # Each chart is named and described by its own <title> and <desc>, which carry every figure.
    # Read in one go in the page: the charts are redrawn (with new ids) when the numbers arrive.
    labels_js = """() => [...document.querySelectorAll('svg.svg-chart')].map((svg) =>
        (svg.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
            .map((id) => document.getElementById(id)?.textContent ?? null))"""
    page.wait_for_function(
        f"() => ({labels_js})().every((l) => l.length === 2 && l[0] && (l[1] || '').includes('%'))"
    )
    for names in page.evaluate(labels_js):
        assert len(names) == 2
        assert names[0]
        assert "%" in (names[1] or "")


def test_the_api_docs_render_without_internet(
    page: Page, live_server: LiveServer, school: School
) -> None:
    """Swagger UI from this server (the page guard fails the test on any request elsewhere)
    renders the OpenAPI 3.1 document: a CDN copy would leave the page blank offline."""
    page.goto(live_server.url("/docs"))
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Reporting & Analytics")
    expect(
        page.locator(".opblock-summary-path[data-path='/stats/groups/{group_id}']")
    ).to_have_count(1)


def test_a_failed_refresh_keeps_the_figures_on_screen(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """The network fails, not the teacher's right to the group: the page keeps what it showed
    and says the refresh failed (it used to wipe the KPIs, tables and charts)."""
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    wait_for_group(page, "7А класс")
    accuracy = kpi(page, "accuracy")

    page.route("**/stats/groups/g-a", lambda route: route.abort())
    page.locator("#refresh").click()
    expect(page.locator("#error-banner")).to_have_text(
        "Сервер недоступен. Проверьте соединение и попробуйте снова."
    )
    assert kpi(page, "accuracy") == accuracy
    expect(page.locator("#group-title")).to_have_text("7А класс")
    expect(page.locator("#topics-table tbody tr")).to_have_count(len(TOPICS))

    page.unroute("**/stats/groups/g-a")
    page.locator("#refresh").click()
    expect(page.locator("#error-banner")).to_be_hidden()
    assert kpi(page, "accuracy") == accuracy


def test_a_group_without_attempts_shows_no_figures_rather_than_zeros(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """A new class: the worker writes its metrics as zeros (CONTRACT §2 defines no mean of
    nothing); the page shows "—", not "0,0 %" accuracy."""
    with psycopg.connect(live_server.db_url) as conn:
        builders.make_group(conn, "g-new", "8А класс")
        builders.make_user(conn, "n1", ["g-new"], "Новенький Ученик")
        builders.make_stat(conn, "group", "g-new", metrics([]))
    try:
        sign_in(page, live_server, make_token("teacher", groups=["g-new"], sub="t-new"))
        wait_for_group(page, "8А класс")
        assert [kpi(page, key) for key in ("accuracy", "hints", "time", "score")] == ["—"] * 4
        assert kpi(page, "attempts") == "0"
        expect(page.locator("#attention-hint")).to_have_text(
            "В группе ещё нет попыток: сравнивать пока не с чем."
        )
    finally:
        with psycopg.connect(live_server.db_url) as conn:
            conn.execute("DELETE FROM materialized_stats WHERE entity_id = 'g-new'")
            conn.execute("DELETE FROM users WHERE id = 'n1'")
            conn.execute("DELETE FROM groups WHERE id = 'g-new'")


def test_the_language_switch_translates_what_is_already_on_screen(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS), hash_="#group=g-x")
    expect(page.locator("#error-banner")).to_have_text("Нет доступа: эти данные вне ваших групп.")
    page.locator('[data-lang="en"]').click()
    expect(page.locator("#error-banner")).to_have_text(
        "Access denied: this is outside your groups."
    )
    # The foreign group is not offered in the picker under its id.
    expect(page.locator('#group-select option[value="g-x"]')).to_have_count(0)

    page.locator("#sign-out").click()
    page.locator("#token-input").fill(make_token("teacher", groups=["no-such-group"], sub="t-0"))
    page.locator("#signin-form button[type=submit]").click()
    title = page.locator("#group-title")
    expect(title).to_have_text(
        "No groups available: the token names no-such-group, and no such group exists in the"
        " data. Ask the platform’s administrator."
    )
    page.locator('[data-lang="ru"]').click()
    expect(title).to_contain_text("Нет доступных групп: в токене указаны no-such-group")
    expect(page.locator("#error-banner")).to_be_hidden()


def test_a_link_to_a_student_of_another_group_opens_their_card_over_an_open_one(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS), hash_="#group=g-a")
    wait_for_group(page, "7А класс")
    page.locator('#attention-list [data-user-id="a3"] button.link-button').click()
    expect(page.locator("#student-title")).to_have_text("Вера Кузнецова")

    page.evaluate("location.hash = 'group=g-b&student=b2'")  # a link followed meanwhile
    wait_for_group(page, "7Б класс")
    expect(page.locator("#student-dialog")).to_be_visible()
    expect(page.locator("#student-title")).to_have_text("Захар Волков")
    assert page.url.endswith("#group=g-b&student=b2")
