"""Live updates: the page reads the real `GET /stats/groups/{id}/events` (Server-Sent Events,
served with REPORTING_ENABLE_LIVE_UPDATES=true) with fetch(), the token in a header and never in
the URL, and refreshes its numbers when the worker's NOTIFY stats_changed names its group.
"""

from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from playwright.sync_api import Page, Request, expect

from reporting.context import AppContext
from reporting.stats.events import PING_SECONDS, StatsEventHub
from tests.builders import Attempt, make_attempts
from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer
from tests.dashboard.pages import kpi, sign_in, wait_for_group
from tests.dashboard.school import TEACHER_GROUPS, School, derive, notify_changed

EVENTS_PATH = "/stats/groups/g-a/events"
PAGE_PATH = "/stats/groups/g-a"


@pytest.fixture(scope="module")
def live_server(live_updates_server: LiveServer) -> LiveServer:
    """In this module the dashboard's server streams events (the page guard checks its origin)."""
    return live_updates_server


@pytest.fixture
def hub(live_server: LiveServer) -> Iterator[StatsEventHub]:
    context: AppContext = live_server.app.state.context  # type: ignore[attr-defined]
    yield context.stats_events
    context.stats_events.ping_seconds = PING_SECONDS


def test_numbers_refresh_when_the_server_says_they_changed(
    page: Page,
    live_server: LiveServer,
    school: School,
    make_token: TokenFactory,
    hub: StatsEventHub,
) -> None:
    hub.ping_seconds = 0.3  # keep-alives flow all through the test
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    token = make_token("teacher", groups=TEACHER_GROUPS)
    sign_in(page, live_server, token)
    wait_for_group(page, "7А класс")
    assert kpi(page, "attempts") == "200"
    # The stream is open (the page shows it) and the server holds its subscription.
    expect(page.locator("#live-indicator")).to_be_visible()
    for _ in range(50):
        if len(hub) == 1:
            break
        page.wait_for_timeout(100)
    assert len(hub) == 1, f"{len(hub)} subscribers on the server"

    streams = [r for r in requests if urlsplit(r.url).path == EVENTS_PATH]
    assert streams, "the page never opened the event stream"
    assert streams[0].headers["authorization"] == f"Bearer {token}"
    assert streams[0].headers["accept"] == "text/event-stream"
    assert all(token not in r.url for r in requests)

    def page_reads() -> int:
        return sum(urlsplit(r.url).path == PAGE_PATH for r in requests)

    # The worker writes new numbers; nothing changes on screen until the stream says so, and
    # neither the pings nor another group's change make the page read its group again.
    reads = page_reads()
    new = Attempt("a1", "g-a", "T1", attempted_at=school.now - timedelta(minutes=5))
    with psycopg.connect(live_server.db_url) as conn:
        make_attempts(conn, [new])
        school.attempts.append(new)
        derive(conn, school)
    with psycopg.connect(live_server.db_url) as conn:
        notify_changed(conn, ["g-b"])
    page.wait_for_timeout(1500)
    assert kpi(page, "attempts") == "200"
    assert page_reads() == reads

    # A keyboard reader on a leaderboard row keeps their place through the redraw.
    focused = page.locator("#leaderboard button.link-button").nth(2)
    focused.focus()
    focus_key = focused.get_attribute("data-focus-key")
    assert focus_key

    with psycopg.connect(live_server.db_url) as conn:
        notify_changed(conn, ["g-a"])
    expect(page.locator('[data-kpi="attempts"] .kpi-value')).to_have_text("201")
    expect(page.locator("#status")).to_have_text("Данные группы обновились.")
    assert page_reads() == reads + 1
    expect(page.locator("#attention-list li").first).to_be_visible()  # the students came too
    assert page.evaluate("document.activeElement.dataset.focusKey") == focus_key
    # That read follows a change: it asks the API not to serve its previous copy; the first
    # load did not need to.
    page_requests = [r for r in requests if urlsplit(r.url).path == PAGE_PATH]
    assert page_requests[-1].headers.get("cache-control") == "no-cache"
    assert "cache-control" not in page_requests[0].headers
    assert all(token not in r.url for r in requests)


def test_the_event_stream_parser_follows_the_sse_rules(page: Page, live_server: LiveServer) -> None:
    """The page's own parser, fed the awkward cases a network produces."""
    page.goto(live_server.url())
    events = page.evaluate(
        """async () => {
            const { SseParser } = await import('/dashboard/static/live.js');
            const parser = new SseParser();
            const chunks = [
                ': comment\\r\\n',
                'event: stats_changed\\r',         // CRLF split across two chunks
                '\\ndata: {"group_ids":\\r\\n',
                'data: ["g-a"]}\\r\\nid: 7\\r\\n\\r\\n',
                'data:no space\\n\\n',              // default type "message"
                'retry: 1500\\nevent: x\\n\\n',     // no data: nothing dispatched
                'data: tail',                       // unfinished: kept for later
            ];
            const out = chunks.flatMap((chunk) => parser.push(chunk));
            // The connection drops inside a block ('tail', then these): its id does not count.
            out.push(...parser.push('\\nid: 9\\ndata: cut'));
            const cutId = parser.lastEventId;
            parser.newConnection();
            out.push(...parser.push(': hello\\ndata: next\\n\\n'));
            return { out, retry: parser.retry, lastId: parser.lastEventId, cutId };
        }"""
    )
    assert events["out"] == [
        {"type": "stats_changed", "data": '{"group_ids":\n["g-a"]}', "id": "7"},
        {"type": "message", "data": "no space", "id": "7"},
        {"type": "message", "data": "next", "id": "7"},
    ]
    assert events["cutId"] == "7"
    assert events["retry"] == 1500
    assert events["lastId"] == "7"
