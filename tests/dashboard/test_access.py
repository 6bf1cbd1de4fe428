"""Role bugs and sessions in Chromium: a teacher who edits the address, rewrites the page's
requests or calls fetch() from the console reaches no foreign data; an admin reaches all; an
expired or refused token leads back to sign-in; the token never travels in a URL."""

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, Response, Route, expect

from reporting.auth.tokens import issue_token
from reporting.settings import AuthSettings
from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer, PageGuard
from tests.dashboard.pages import fetch_status, kpi, sign_in, stored_token, wait_for_group
from tests.dashboard.school import FOREIGN_GROUP, FOREIGN_NAMES, TEACHER_GROUPS, School


def assert_nothing_foreign(page: Page) -> None:
    html = page.content()
    assert not any(name in html for name in FOREIGN_NAMES)
    assert "9В класс" not in html


def assert_refused(page: Page) -> None:
    banner = page.locator("#error-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Нет доступа")
    expect(page.locator("#group-content")).to_be_hidden()
    expect(page.locator("#kpi-cards .kpi")).to_have_count(0)
    assert_nothing_foreign(page)


@pytest.fixture
def teacher_page(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> Iterator[Page]:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, sub="t-access"))
    wait_for_group(page, "7А класс")
    yield page


@pytest.mark.parametrize("group_id", [FOREIGN_GROUP, "no-such-group"])
def test_teacher_editing_the_address_to_another_group_sees_an_error_never_data(
    teacher_page: Page, group_id: str
) -> None:
    page = teacher_page
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if group_id in r.url else None)
    page.evaluate("(id) => { location.hash = 'group=' + id; }", group_id)
    assert_refused(page)
    expect(page.locator("#group-title")).to_have_text("—")
    assert answers and {r.status for r in answers} == {403}


def test_teacher_editing_the_address_to_a_foreign_student_sees_an_error(
    teacher_page: Page,
) -> None:
    page = teacher_page
    page.evaluate("location.hash = 'group=g-a&student=x1'")
    dialog = page.locator("#student-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#student-error")).to_contain_text("Нет доступа")
    expect(page.locator("#student-body")).to_be_empty()
    assert_nothing_foreign(page)
    # The teacher's own group is still on screen behind the dialog.
    assert kpi(page, "attempts") == "200"


def test_rewritten_requests_to_a_foreign_group_get_an_error_never_data(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    """As if the teacher edited each request in the developer tools before it left."""

    def to_foreign(route: Route) -> None:
        route.continue_(url=route.request.url.replace("/g-a", f"/{FOREIGN_GROUP}"))

    page.route(re.compile(r".*/(stats|dashboard/api)/groups/g-a(/.*)?$"), to_foreign)
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS))
    assert_refused(page)


def test_console_fetch_with_foreign_ids_is_refused(teacher_page: Page) -> None:
    page = teacher_page
    attempts = [
        (f"/stats/groups/{FOREIGN_GROUP}", "GET", None),
        ("/stats/users/x1", "GET", None),
        (f"/stats/leaderboards/group/{FOREIGN_GROUP}", "GET", None),
        (f"/dashboard/api/groups/{FOREIGN_GROUP}/students", "GET", None),
        (
            f"/stats/groups/{FOREIGN_GROUP}/export",
            "POST",
            {
                "topic_ids": [],
                "period": {"from": "2026-01-01", "to": "2026-12-31"},
                "format": "csv",
            },
        ),
    ]
    for path, method, body in attempts:
        answer = fetch_status(page, path, method, body)
        assert answer["status"] == 403, (path, answer)
        assert not any(name in str(answer["text"]) for name in FOREIGN_NAMES)
    own = fetch_status(page, "/stats/groups/g-a")
    assert own["status"] == 200  # the same token, its own group: the refusals were about scope
    assert_nothing_foreign(page)


def test_an_expired_session_returns_to_sign_in(
    page: Page,
    live_server: LiveServer,
    school: School,
    make_token: TokenFactory,
    page_guard: PageGuard,
) -> None:
    token = make_token("teacher", groups=TEACHER_GROUPS, ttl=3)
    sign_in(page, live_server, token)
    wait_for_group(page, "7А класс")
    # The page signs out when the token runs out, without waiting for a request to fail.
    expect(page.locator("#signin-view")).to_be_visible(timeout=8000)
    expect(page.locator("#signin-message")).to_have_text("Сессия истекла. Войдите снова.")
    expect(page.locator("#dashboard-view")).to_be_hidden()
    expect(page.locator("#kpi-cards .kpi")).to_have_count(0)
    assert stored_token(page) is None
    # The token was only ever sent as a header: never in an address, never in localStorage.
    assert not any(token in url for url in page_guard.requests)
    assert token not in page.evaluate("JSON.stringify(localStorage)")


def test_any_401_returns_to_sign_in(teacher_page: Page) -> None:
    """A token the server stops accepting mid-session (here: signed with another key)."""
    page = teacher_page
    forged = issue_token(
        AuthSettings(REPORTING_JWT_SECRET="another-secret-" + "y" * 20),
        role="teacher",
        sub="t-access",
        group_ids=TEACHER_GROUPS,
    )
    page.evaluate("(t) => sessionStorage.setItem('reporting.token', t)", forged)
    # Dispatched, not clicked: a background request (such as the live stream reconnecting) may
    # already have been refused and hidden the button, which is the same outcome.
    page.locator("#refresh").dispatch_event("click")
    expect(page.locator("#signin-view")).to_be_visible()
    # In Russian only: the server's English detail is not pasted into the sentence.
    expect(page.locator("#signin-message")).to_have_text(
        "Сервер не принял токен: он неверен, истёк или подписан другим ключом."
    )
    assert stored_token(page) is None


def test_an_already_expired_or_unfit_token_is_refused_at_sign_in(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("teacher", groups=TEACHER_GROUPS, ttl=-5), accepted=False)
    expect(page.locator("#signin-view")).to_be_visible()
    expect(page.locator("#signin-message")).to_have_text("Сессия истекла. Войдите снова.")

    page.locator("#token-input").fill(make_token("service"))
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator("#signin-message")).to_contain_text("роль «service»")

    page.locator("#token-input").fill("not a token")
    page.locator("#signin-form button[type=submit]").click()
    expect(page.locator("#signin-message")).to_contain_text("Это не JWT")
    assert stored_token(page) is None


def test_admin_opens_any_group_from_the_address(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    sign_in(page, live_server, make_token("admin"), hash_=f"#group={FOREIGN_GROUP}")
    wait_for_group(page, "9В класс")
    expect(page.locator("#leaderboard")).to_contain_text(FOREIGN_NAMES[1])
    page.evaluate("location.hash = 'group=no-such-group'")
    expect(page.locator("#error-banner")).to_have_text(
        "Не найдено: такой группы, ученика или выгрузки нет."
    )


def test_demo_tokens_are_offered_only_by_a_demo_server(
    page: Page, live_server: LiveServer, school: School
) -> None:
    page.goto(live_server.url())
    expect(page.locator("#signin-view")).to_be_visible()
    expect(page.locator("#demo-tokens-box")).to_be_hidden()

    auth = AuthSettings(REPORTING_JWT_SECRET=live_server.env["REPORTING_JWT_SECRET"])
    teacher = issue_token(auth, role="teacher", sub="demo-teacher-1", group_ids=TEACHER_GROUPS)
    live_server.app.state.demo_tokens = [  # type: ignore[attr-defined]
        {
            "label": "Учитель / Teacher: 7А, 7Б",
            "role": "teacher",
            "token": teacher,
            "groups": "7А, 7Б",
        }
    ]
    try:
        page.reload()
        # The role in the page's language (the label with both is the terminal's).
        page.locator("[data-lang=en]").click()
        expect(page.locator("#demo-token-list button")).to_have_text("Teacher: 7А, 7Б")
        page.locator("[data-lang=ru]").click()
        page.get_by_role("button", name="Учитель: 7А, 7Б", exact=True).click()
    finally:
        live_server.app.state.demo_tokens = []  # type: ignore[attr-defined]
    wait_for_group(page, "7А класс")
    assert stored_token(page) == teacher
