"""Steps the browser tests share: signing in, waiting for a group, reading what is shown."""

import json

from playwright.sync_api import Page, expect

from tests.dashboard.conftest import LiveServer

TOKEN_KEY = "reporting.token"


def sign_in(
    page: Page, server: LiveServer, token: str, *, hash_: str = "", accepted: bool = True
) -> None:
    """Through the sign-in form, as a person would; then (if `accepted`) wait for the form to go."""
    page.goto(server.url("/dashboard" + hash_))
    page.locator("#token-input").fill(token)
    page.locator("#signin-form button[type=submit]").click()
    if accepted:
        expect(page.locator("#signin-view")).to_be_hidden()


def wait_for_group(page: Page, name: str) -> None:
    expect(page.locator("#group-title")).to_have_text(name)
    expect(page.locator("#kpi-cards .kpi")).to_have_count(6)


def kpi(page: Page, key: str) -> str:
    return page.locator(f'#kpi-cards .kpi[data-kpi="{key}"] .kpi-value').inner_text()


def stored_token(page: Page) -> str | None:
    value: str | None = page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})")
    return value


def fetch_status(
    page: Page, path: str, method: str = "GET", body: object = None
) -> dict[str, object]:
    """What fetch() from the page's console gets for `path`, with the page's own token."""
    result: dict[str, object] = page.evaluate(
        """async ([path, method, body, key]) => {
            const init = {method, headers: {Authorization: 'Bearer ' + sessionStorage.getItem(key)}};
            if (body !== null) {
                init.body = JSON.stringify(body);
                init.headers['Content-Type'] = 'application/json';
            }
            const response = await fetch(path, init);
            return {status: response.status, text: await response.text()};
        }""",
        [path, method, body, TOKEN_KEY],
    )
    return result
