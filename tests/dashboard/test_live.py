"""Live updates: the page reads Server-Sent Events with fetch() (the token in a header, never in
the URL) and refreshes its numbers when an event says they changed.

`GET /stats/groups/{id}/events` is not served by the API yet (REPORTING_ENABLE_LIVE_UPDATES is a
later feature), so the stream itself comes from Playwright's route: the same bytes that route
will send, while the numbers still come from the real API and database.
"""

import json
import threading
from datetime import timedelta

import psycopg
from playwright.sync_api import Page, Route, expect

from tests.builders import Attempt, make_attempts
from tests.conftest import TokenFactory
from tests.dashboard.conftest import LiveServer
from tests.dashboard.pages import kpi, sign_in, wait_for_group
from tests.dashboard.school import TEACHER_GROUPS, School, derive, notify_changed


class FakeStream:
    """Answers each (re)connection with the events queued since the last one, then ends it;
    `retry:` makes the page reconnect soon. Records the headers the page sent."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.lock = threading.Lock()
        self.requests: list[dict[str, str]] = []
        self.urls: list[str] = []

    def send(self, event: str, data: object) -> None:
        with self.lock:
            self.pending.append(f"event: {event}\ndata: {json.dumps(data)}\n\n")

    def handle(self, route: Route) -> None:
        self.requests.append(route.request.headers)
        self.urls.append(route.request.url)
        with self.lock:
            body, self.pending = "".join(self.pending), []
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body=": connected\nretry: 250\n\n" + body,
        )


def test_numbers_refresh_when_the_server_says_they_changed(
    page: Page, live_server: LiveServer, school: School, make_token: TokenFactory
) -> None:
    stream = FakeStream()
    page.route("**/stats/groups/g-a/events", stream.handle)
    token = make_token("teacher", groups=TEACHER_GROUPS)
    sign_in(page, live_server, token)
    wait_for_group(page, "7А класс")
    assert kpi(page, "attempts") == "200"
    for _ in range(50):  # route handlers run while the page waits
        if stream.requests:
            break
        page.wait_for_timeout(100)
    assert stream.requests, "the page never opened the event stream"
    assert stream.requests[0]["authorization"] == f"Bearer {token}"
    assert stream.requests[0]["accept"] == "text/event-stream"
    assert all(token not in url for url in stream.urls)

    # The worker writes new numbers; nothing changes on screen until the stream says so.
    new = Attempt("a1", "g-a", "T1", attempted_at=school.now - timedelta(minutes=5))
    with psycopg.connect(live_server.db_url) as conn:
        make_attempts(conn, [new])
        school.attempts.append(new)
        derive(conn, school)
        notify_changed(conn, ["g-a"])
    page.wait_for_timeout(1000)
    assert kpi(page, "attempts") == "200"

    stream.send("ping", {})  # a keep-alive is not a change
    page.wait_for_timeout(800)
    assert kpi(page, "attempts") == "200"

    stream.send("stats_changed", {"group_ids": ["g-a"]})
    expect(page.locator('[data-kpi="attempts"] .kpi-value')).to_have_text("201")
    expect(page.locator("#status")).to_have_text("Данные группы обновились.")


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
            return { out, retry: parser.retry, lastId: parser.lastEventId };
        }"""
    )
    assert events["out"] == [
        {"type": "stats_changed", "data": '{"group_ids":\n["g-a"]}', "id": "7"},
        {"type": "message", "data": "no space", "id": "7"},
    ]
    assert events["retry"] == 1500
    assert events["lastId"] == "7"
