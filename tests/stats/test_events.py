"""GET /stats/groups/{id}/events against the real app served by uvicorn on 127.0.0.1: access
rules, the stream's format, NOTIFY stats_changed reaching it, pings, the subscriber count, the
cap, and a `reporting serve` process that stops promptly with a stream open."""

import base64
import contextlib
import itertools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn

from reporting.app import create_app
from reporting.context import AppContext
from reporting.settings import WorkerSettings
from reporting.stats.cache import LISTENER_APPLICATION_NAME
from reporting.stats.events import (
    MAX_STREAMS_PER_SUBJECT,
    MAX_SUBSCRIBERS,
    PING_SECONDS,
    StatsChange,
    StatsEventHub,
    Subscription,
    parse_change,
)
from tests.builders import make_group
from tests.conftest import TokenFactory, make_settings
from tests.ops import processes
from tests.servers import free_port

WITHIN_SECS = 5.0


@dataclass
class Server:
    base_url: str
    context: AppContext

    @property
    def hub(self) -> StatsEventHub:
        return self.context.stats_events


@contextlib.contextmanager
def _serve(url: str, *, live_updates: bool) -> Iterator[Server]:
    """The real app in a uvicorn thread on a free 127.0.0.1 port; stopped (bounded) at exit."""
    settings = make_settings(url, worker=WorkerSettings(REPORTING_ENABLE_LIVE_UPDATES=live_updates))
    app = create_app(settings, url=url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="events-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", app.state.context)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the API did not stop"


@pytest.fixture(scope="module")
def school_url(module_db_url: str) -> str:
    with psycopg.connect(module_db_url) as conn:
        make_group(conn, "g1", "Группа 1")
        make_group(conn, "g2", "Группа 2")
    return module_db_url


@pytest.fixture(scope="module")
def live(school_url: str) -> Iterator[Server]:
    with _serve(school_url, live_updates=True) as server:
        yield server


@pytest.fixture
def server(live: Server) -> Iterator[Server]:
    """The shared live server, its hub's knobs back to their defaults after each test."""
    yield live
    live.hub.ping_seconds = PING_SECONDS
    live.hub.max_subscribers = MAX_SUBSCRIBERS
    live.hub.max_per_subject = MAX_STREAMS_PER_SUBJECT


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # Every read bounded: an event that never comes fails the test after WITHIN_SECS.
    with httpx.Client(timeout=httpx.Timeout(WITHIN_SECS)) as http:
        yield http


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _notify(url: str, payload: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('stats_changed', %s)", (json.dumps(payload),))


def _until(predicate: Callable[[], bool], timeout: float = WITHIN_SECS) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class Block:
    """One blank-line-terminated block of the stream: its fields (data lines joined)."""

    fields: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    @property
    def event(self) -> str | None:
        return self.fields.get("event")

    @property
    def data(self) -> object:
        return json.loads(self.fields["data"])


class Stream:
    """Reads an open text/event-stream response block by block (each read bounded)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.hello = Block()  # the opening block, once read

    def next(self) -> Block:
        block = Block()
        for line in self._lines:
            if line == "":
                return block
            if line.startswith(":"):
                block.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            block.fields[name] = (
                block.fields[name] + "\n" + value if name in block.fields else value
            )
        raise AssertionError("the stream ended")

    def next_event(self) -> Block:
        """The next block that is not a ping."""
        while (block := self.next()).event == "ping":
            pass
        return block


@contextlib.contextmanager
def _open(
    client: httpx.Client,
    server: Server,
    token: str,
    group_id: str = "g1",
    headers: dict[str, str] | None = None,
) -> Iterator[Stream]:
    """An open stream past its opening block (so the subscription exists)."""
    url = f"{server.base_url}/stats/groups/{group_id}/events"
    with client.stream("GET", url, headers={**_bearer(token), **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        stream = Stream(response)
        stream.hello = stream.next()
        assert stream.hello.comments and stream.hello.fields["retry"] == "3000"
        assert set(stream.hello.fields) <= {"retry", "id"}
        yield stream


# --- who may open a stream ------------------------------------------------------------------------


def test_live_updates_off_is_404_problem_saying_so(
    school_url: str, client: httpx.Client, make_token: TokenFactory
) -> None:
    with _serve(school_url, live_updates=False) as off:
        response = client.get(
            f"{off.base_url}/stats/groups/g1/events",
            headers=_bearer(make_token("teacher", groups=["g1"])),
        )
        unauthenticated = client.get(f"{off.base_url}/stats/groups/g1/events")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "live updates are off" in response.json()["detail"].lower()
    assert unauthenticated.status_code == 401


def test_no_token_is_401(server: Server, client: httpx.Client) -> None:
    response = client.get(f"{server.base_url}/stats/groups/g1/events")

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("role", "groups", "group_id", "status"),
    [
        ("teacher", ["g1"], "g2", 403),  # foreign
        ("teacher", ["g1"], "nope", 403),  # unknown: no existence leak
        ("service", [], "g1", 403),
        ("admin", [], "nope", 404),
    ],
)
def test_refusals_are_those_of_the_group_page(
    server: Server,
    client: httpx.Client,
    make_token: TokenFactory,
    role: str,
    groups: list[str],
    group_id: str,
    status: int,
) -> None:
    response = client.get(
        f"{server.base_url}/stats/groups/{group_id}/events",
        headers=_bearer(make_token(role, groups=groups)),
    )

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert len(server.hub) == 0


# --- the stream ------------------------------------------------------------------------------------


def test_stream_headers_and_opening(
    server: Server, client: httpx.Client, make_token: TokenFactory
) -> None:
    url = f"{server.base_url}/stats/groups/g1/events"
    token = make_token("teacher", groups=["g1"])
    with client.stream("GET", url, headers=_bearer(token)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        lines = response.iter_lines()
        opening = list(itertools.takewhile(bool, lines))  # to the blank line that ends the block

    assert opening[0].startswith(":")
    assert opening[1:] == ["retry: 3000", f"id: {server.hub.instance}-{server.hub.published}"]


def test_a_notify_for_the_group_arrives_as_an_event(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    with _open(client, server, make_token("teacher", groups=["g1"])) as stream:
        sent = time.monotonic()
        _notify(school_url, {"tick_id": 5, "group_ids": ["g1"]})
        event = stream.next_event()
        elapsed = time.monotonic() - sent

    assert elapsed < WITHIN_SECS
    assert event.fields["id"] == server.hub.event_id
    assert event.event == "stats_changed"
    assert event.data == {"group_id": "g1", "tick_id": 5}


def test_other_groups_changes_do_not_arrive_and_null_means_every_group(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    with _open(client, server, make_token("admin")) as stream:
        start = server.hub.published
        _notify(school_url, {"tick_id": 6, "group_ids": ["g2"]})
        _notify(school_url, {"tick_id": 7, "group_ids": None, "mode": "full"})
        first = stream.next_event()
        _notify(school_url, {"tick_id": 8, "group_ids": ["g2", "g1"]})
        second = stream.next_event()

    # NOTIFYs arrive in order: had tick 6 reached this stream, it would have come first.
    instance = server.hub.instance
    assert (first.fields["id"], first.data) == (
        f"{instance}-{start + 2}",
        {"group_id": "g1", "tick_id": 7},
    )
    assert (second.fields["id"], second.data) == (
        f"{instance}-{start + 3}",
        {"group_id": "g1", "tick_id": 8},
    )


def test_a_payload_without_tick_still_says_changed(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    with _open(client, server, make_token("teacher", groups=["g1"])) as stream:
        _notify(school_url, {"group_ids": ["g1"]})
        event = stream.next_event()

    assert event.fields["id"] == server.hub.event_id
    assert event.data == {"group_id": "g1", "tick_id": None}


def test_ping_keeps_a_quiet_stream_alive(
    server: Server, client: httpx.Client, make_token: TokenFactory
) -> None:
    server.hub.ping_seconds = 0.2
    with _open(client, server, make_token("teacher", groups=["g1"])) as stream:
        pings = [stream.next(), stream.next()]

    assert [p.event for p in pings] == ["ping", "ping"]


def test_a_stream_that_reconnects_with_its_last_event_id_is_told_what_it_missed(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    token = make_token("teacher", groups=["g2"])
    server.hub.ping_seconds = 0.2
    with _open(client, server, token, "g2") as first:
        seen = first.hello.fields["id"]  # no event yet: the opening block's id
    before = server.hub.published
    _notify(school_url, {"group_ids": ["g2"]})  # while it is away: a directory upsert, no tick
    assert _until(lambda: server.hub.published > before)

    with _open(client, server, token, "g2", {"Last-Event-ID": seen}) as again:
        missed = again.next_event()
    with _open(client, server, token, "g2", {"Last-Event-ID": missed.fields["id"]}) as current:
        quiet = current.next()

    assert "id" not in again.hello.fields  # the id moves on only with the change's own block
    assert (missed.event, missed.data["group_id"]) == ("stats_changed", "g2")
    assert quiet.event == "ping"  # up to date: nothing replayed


def test_a_lost_listener_tells_open_streams_that_anything_may_have_changed(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    with _open(client, server, make_token("teacher", groups=["g1"])) as stream:
        with psycopg.connect(school_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (LISTENER_APPLICATION_NAME,),
            )
        event = stream.next_event()  # once the listener is back (0.5 s)

    assert event.event == "stats_changed"
    assert event.data == {"group_id": "g1", "tick_id": None}


# --- resources -------------------------------------------------------------------------------------


def test_disconnect_removes_the_subscriber_and_streams_hold_no_connection(
    server: Server, make_token: TokenFactory
) -> None:
    token = make_token("teacher", groups=["g1"])
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(timeout=WITHIN_SECS)) for _ in range(3)]
        for http in clients:
            stack.enter_context(_open(http, server, token))
        assert len(server.hub) == 3
        stats = server.context.db.pool.get_stats()
        assert stats["pool_size"] == stats["pool_available"], f"connections in use: {stats}"

    assert _until(lambda: len(server.hub) == 0), f"{len(server.hub)} subscribers left"


def test_beyond_the_cap_is_503(
    server: Server, client: httpx.Client, make_token: TokenFactory
) -> None:
    server.hub.max_subscribers = 1
    token = make_token("teacher", groups=["g1"])
    with _open(client, server, token), httpx.Client(timeout=WITHIN_SECS) as other:
        refused = other.get(f"{server.base_url}/stats/groups/g1/events", headers=_bearer(token))

    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0


def test_a_stream_ends_when_its_token_expires(
    server: Server, client: httpx.Client, make_token: TokenFactory, school_url: str
) -> None:
    """A refused token must not keep receiving events: the client comes back with a fresh one."""
    server.hub.ping_seconds = 0.3
    token = make_token("teacher", groups=["g1"], ttl=3)
    expires_at = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==").decode())["exp"]
    with _open(client, server, token) as stream:
        _notify(school_url, {"group_ids": ["g1"]})
        assert stream.next_event().event == "stats_changed"  # valid: told
        with pytest.raises(AssertionError, match="the stream ended"):
            while time.time() < expires_at + 5:  # pings keep coming while it stays open
                stream.next()
        ended = time.time()
    assert expires_at <= ended < expires_at + 2
    assert _until(lambda: len(server.hub) == 0)


def test_one_user_cannot_take_every_stream(
    server: Server, client: httpx.Client, make_token: TokenFactory
) -> None:
    server.hub.max_per_subject = 2
    greedy = make_token("teacher", groups=["g1"], sub="greedy")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(timeout=WITHIN_SECS)) for _ in range(3)]
        for http in clients[:2]:
            stack.enter_context(_open(http, server, greedy))
        refused = clients[2].get(
            f"{server.base_url}/stats/groups/g1/events", headers=_bearer(greedy)
        )
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) > 0
        # Another user is not held up by that one.
        with _open(clients[2], server, make_token("teacher", groups=["g1"], sub="other")):
            assert len(server.hub) == 3
    assert _until(lambda: len(server.hub) == 0)
    with _open(client, server, greedy):  # the slots come back as streams close
        pass


def test_a_slow_reader_costs_one_pending_change() -> None:
    """However many ticks pass unread, a subscription holds one change: the newest."""
    hub = StatsEventHub(enabled=True)
    subscription = hub.subscribe("g1")
    for tick in range(1, 10_001):
        hub.publish(json.dumps({"tick_id": tick, "group_ids": ["g1", "g2"]}))

    assert subscription.pending and subscription.tick_id == 10_000
    assert (
        subscription.take()
        == (
            f"id: {hub.instance}-10000\nevent: stats_changed\n"
            'data: {"group_id": "g1", "tick_id": 10000}\n\n'
        ).encode()
    )
    assert not subscription.pending
    hub.unsubscribe(subscription)
    assert len(hub) == 0


def _reconnect(hub: StatsEventHub, group_id: str, last_event_id: str) -> Subscription:
    subscription = hub.subscribe(group_id, last_event_id)
    hub.unsubscribe(subscription)
    return subscription


def test_a_reconnecting_stream_is_told_of_each_kind_of_change_it_missed_and_only_those() -> None:
    hub = StatsEventHub(enabled=True)
    opened = hub.subscribe("g1")
    hub.unsubscribe(opened)
    at_open = opened.event_id

    hub.publish(json.dumps({"tick_id": 9, "group_ids": ["g2"]}))  # another group's
    after_other_group = hub.event_id
    quiet = _reconnect(hub, "g1", at_open)
    hub.publish(json.dumps({"group_ids": ["g1"]}))  # no tick: a directory upsert
    after_upsert = hub.event_id
    upsert = _reconnect(hub, "g1", after_other_group)
    told = _reconnect(hub, "g1", upsert.event_id)  # told once, it is up to date
    hub.publish(json.dumps({"tick_id": 10, "group_ids": ["g2", "g1"]}))
    tick = _reconnect(hub, "g1", after_upsert)
    before_gap = hub.event_id
    hub.publish(None)  # the listener came back after a gap
    gap = _reconnect(hub, "g2", before_gap)
    current = _reconnect(hub, "g1", hub.event_id)

    assert not quiet.pending
    assert upsert.pending and upsert.event_id == after_upsert and upsert.tick_id is None
    assert not told.pending
    assert tick.pending and tick.tick_id == 10
    assert gap.pending
    assert not current.pending


def test_an_id_of_another_process_or_none_of_ours_is_told_once() -> None:
    hub = StatsEventHub(enabled=True)  # told only of another group's change
    other = StatsEventHub(enabled=True)

    hub.publish(json.dumps({"tick_id": 1, "group_ids": ["g2"]}))
    too_far, too_long = f"{hub.instance}-2", f"{hub.instance}-" + "9" * 5000
    for foreign in (other.event_id, "12", "garbage", f"{hub.instance}-x", too_far, too_long):
        assert _reconnect(hub, "g1", foreign).pending, foreign
    assert not _reconnect(hub, "g1", hub.event_id).pending
    assert not hub.subscribe("g1").pending  # a first connection (no Last-Event-ID): nothing


def test_the_opening_block_has_the_id_unless_a_missed_change_is_pending() -> None:
    hub = StatsEventHub(enabled=True)
    hub.publish(json.dumps({"tick_id": 3, "group_ids": ["g1"]}))
    fresh = hub.subscribe("g1")
    behind = hub.subscribe("g1", f"{hub.instance}-0")

    assert fresh.opening() == (
        f": stats_changed events\nretry: 3000\nid: {hub.instance}-1\n\n".encode()
    )
    assert behind.opening() == b": stats_changed events\nretry: 3000\n\n"
    assert (
        behind.take()
        == (
            f"id: {hub.instance}-1\nevent: stats_changed\n"
            'data: {"group_id": "g1", "tick_id": 3}\n\n'
        ).encode()
    )


@pytest.mark.parametrize(
    ("payload", "change"),
    [
        ('{"tick_id": 3, "group_ids": ["a"]}', StatsChange(3, frozenset({"a"}))),
        ('{"tick_id": 3, "group_ids": null, "x": 1}', StatsChange(3, None)),
        ('{"tick_id": "3", "group_ids": ["a"]}', StatsChange(None, frozenset({"a"}))),
        ('{"tick_id": true, "group_ids": ["a"]}', StatsChange(None, frozenset({"a"}))),
        ("not json", StatsChange(None, None)),
    ],
)
def test_payloads_are_read_leniently(payload: str, change: StatsChange) -> None:
    assert parse_change(payload) == change


def test_openapi_documents_the_stream(server: Server, client: httpx.Client) -> None:
    operation = client.get(f"{server.base_url}/openapi.json").json()["paths"][
        "/stats/groups/{group_id}/events"
    ]["get"]

    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "403", "404", "503"} <= set(operation["responses"])
    assert any(p["name"] == "last-event-id" for p in operation["parameters"])


# --- shutdown --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_ends_open_streams_and_the_server_stops_promptly(
    school_url: str, tmp_path: Path, make_token: TokenFactory
) -> None:
    """uvicorn waits for open responses before it stops; an event stream must not make it wait
    for its 10 s graceful-shutdown timeout."""
    env = processes.service_env(
        database_url=school_url,
        data_dir=tmp_path / "data",
        extra={"REPORTING_ENABLE_LIVE_UPDATES": "true"},
    )
    api = processes.start_api(env, tmp_path)
    try:
        url = f"{api.url}/stats/groups/g1/events"
        headers = _bearer(make_token("teacher", groups=["g1"]))
        with (
            httpx.Client(timeout=WITHIN_SECS) as http,
            http.stream("GET", url, headers=headers) as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith(":")
            begun = time.monotonic()
            api.process.send_signal(signal.SIGTERM)
            rest = list(lines)  # ends cleanly (no error) when the server closes the stream
            ended = time.monotonic() - begun
        code = api.process.wait(timeout=15)
        stopped = time.monotonic() - begun
    finally:
        api.kill()

    assert rest[0] == "retry: 3000"
    assert rest[1].startswith("id: ")
    assert rest[2] == ""
    assert ended < 2, f"the stream stayed open {ended:.1f} s after SIGTERM"
    assert code == 0, api.tail()
    assert stopped < 5, f"the server took {stopped:.1f} s to stop"
