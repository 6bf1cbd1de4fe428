"""GET /stats/groups/{id}/events: the worker's `stats_changed` notifications, fanned out to the
Server-Sent Event streams open in this process.

No connection of its own: `StatsChangeListener` (cache.py) holds the process's one LISTEN and
hands every payload to `StatsEventHub.publish` right after the cache dropped what it names, so a
page that refetches on the event never gets the stale answer. A stream is a `Subscription` to one
group holding at most one pending change: a newer tick overwrites an unsent one (a dashboard only
needs "changed"), so a slow or stalled client costs constant memory. At most `MAX_SUBSCRIBERS`
streams per process (beyond that 503), and `MAX_STREAMS_PER_SUBJECT` of one token's subject
(beyond that 429: one user's tabs cannot take every slot). A stream ends when its token expires:
the client reconnects with a fresh one (or is refused).

Every block that moves a stream on carries an event id (see StatsEventHub), the opening one
too unless a missed change follows it at once. A client that reconnects with its Last-Event-ID
(EventSource does, after a dropped connection) is told at once if its group changed meanwhile:
by a tick, a directory upsert or a gap of the listener.

A stream ends when its client goes (Starlette cancels it on http.disconnect) or when the hub
closes. uvicorn waits for open responses before it shuts the app down, and an event stream never
finishes by itself, so SIGTERM/SIGINT close the hub first (`closed_on_exit_signals`).
"""

import asyncio
import contextlib
import json
import logging
import math
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from reporting.auth.scope import Scope as AccessScope
from reporting.db import channels
from reporting.db.engine import Database
from reporting.errors import NotFound, ServiceUnavailable, TooManyRequests
from reporting.stats import service
from reporting.stats.cache import ResponseCache, changed_groups

log = logging.getLogger(__name__)

# Under the 30-60 s idle timeouts of common proxies and load balancers.
PING_SECONDS = 15.0
RETRY_MILLISECONDS = 3000
# Each stream is a socket and a few hundred bytes here; the cap keeps a reconnect storm or a
# leaky client from taking the process's file descriptors.
MAX_SUBSCRIBERS = 1000
# A teacher's tabs, each following a group: a few, not hundreds.
MAX_STREAMS_PER_SUBJECT = 20

LIVE_UPDATES_OFF = "Live updates are off on this server (REPORTING_ENABLE_LIVE_UPDATES=false)."
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx would otherwise hold the events back in its buffer.
    "X-Accel-Buffering": "no",
}
_PING = b"event: ping\ndata: {}\n\n"


@dataclass(frozen=True, slots=True)
class StatsChange:
    """One notification: the worker's tick (None when the payload has none) and the groups it
    changed (None: every group)."""

    tick_id: int | None
    group_ids: frozenset[str] | None


def parse_change(payload: str) -> StatsChange:
    groups = changed_groups(payload)
    try:
        message = json.loads(payload)
    except ValueError:
        message = None
    tick_id = message.get("tick_id") if isinstance(message, dict) else None
    if not isinstance(tick_id, int) or isinstance(tick_id, bool) or tick_id < 0:
        tick_id = None
    return StatsChange(tick_id, None if groups is None else frozenset(groups))


class Subscription:
    """One stream's view of one group: whether a change is unsent, its event id, and the newest
    tick seen."""

    __slots__ = (
        "_wake",
        "closed",
        "event_id",
        "expires_at",
        "group_id",
        "pending",
        "sub",
        "tick_id",
    )

    def __init__(
        self, group_id: str, event_id: str, *, sub: str = "", expires_at: float | None = None
    ) -> None:
        self.group_id = group_id
        self.sub = sub
        self.expires_at = expires_at  # epoch seconds: the stream ends then (its token's exp)
        self.event_id = event_id  # where the stream stands: the opening block's id, then events'
        self.tick_id: int | None = None
        self.pending = False
        self.closed = False
        self._wake = asyncio.Event()

    def notify(self, tick_id: int | None, event_id: str) -> None:
        if tick_id is not None and (self.tick_id is None or tick_id > self.tick_id):
            self.tick_id = tick_id
        self.event_id = event_id
        self.pending = True
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self, seconds: float) -> bool:
        """True once woken (a change or the close), False after `seconds` of quiet."""
        if not self._wake.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
            except TimeoutError:
                return False
        self._wake.clear()
        return True

    def opening(self) -> bytes:
        """The first block: a comment, the retry delay and the stream's event id. Without the
        id while a change is pending (one missed while disconnected): the client's id moves on
        only with the block that tells of the change, so losing that block loses nothing."""
        event_id = "" if self.pending else f"id: {self.event_id}\n"
        return f": stats_changed events\nretry: {RETRY_MILLISECONDS}\n{event_id}\n".encode()

    def take(self) -> bytes:
        """The pending change as one SSE event (and nothing pending any more)."""
        self.pending = False
        data = json.dumps({"group_id": self.group_id, "tick_id": self.tick_id})
        return f"id: {self.event_id}\nevent: stats_changed\ndata: {data}\n\n".encode()


class StatsEventHub:
    """The process's open event streams, by group; fed by the stats_changed listener.

    Event ids are `{instance}-{n}`: this hub's random instance name and the number of changes it
    had been told of, so a Last-Event-ID says exactly which changes its client saw, ticks or not
    (a directory upsert has no tick; a listener gap has nothing at all). One of another process
    (a restart, another API worker) says nothing: that client is told once that its group
    changed, a needless reload at worst rather than a page left stale.
    """

    def __init__(
        self,
        *,
        enabled: bool = False,
        max_subscribers: int = MAX_SUBSCRIBERS,
        max_per_subject: int = MAX_STREAMS_PER_SUBJECT,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self.enabled = enabled
        self.max_subscribers = max_subscribers
        self.max_per_subject = max_per_subject
        self.ping_seconds = ping_seconds
        self.closed = False
        self.published = 0
        self.instance = secrets.token_hex(6)
        self._by_group: dict[str, set[Subscription]] = {}
        self._by_sub: dict[str, int] = {}
        self._count = 0
        # Per group, and for "every group": the number of the last change, and its newest tick.
        self._changed: dict[str, int] = {}
        self._changed_all = 0
        self._last_tick: dict[str, int] = {}
        self._last_tick_all: int | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def event_id(self) -> str:
        """The id that stands for every change this hub was told of so far."""
        return f"{self.instance}-{self.published}"

    def publish(self, payload: str | None) -> None:
        """A stats_changed payload; None when changes may have been missed (the listener came
        back after a gap): every stream is told that everything changed."""
        change = StatsChange(None, None) if payload is None else parse_change(payload)
        self.published += 1
        tick, event_id = change.tick_id, self.event_id
        if change.group_ids is None:
            self._changed_all = self.published
            if tick is not None:
                self._last_tick_all = max(tick, self._last_tick_all or 0)
            for subscriptions in self._by_group.values():
                for subscription in subscriptions:
                    subscription.notify(tick, event_id)
            return
        for group_id in change.group_ids:
            self._changed[group_id] = self.published
            if tick is not None:
                self._last_tick[group_id] = max(tick, self._last_tick.get(group_id, 0))
            for subscription in self._by_group.get(group_id, ()):
                subscription.notify(tick, event_id)

    def subscribe(
        self,
        group_id: str,
        last_event_id: str | None = None,
        *,
        sub: str = "",
        expires_at: float | None = None,
    ) -> Subscription:
        """A new stream of `group_id` for subject `sub`, ending at `expires_at`; 503 when the
        process is full or shutting down, 429 when `sub` has its share open. A stream that
        reconnects with `last_event_id` starts with what it missed since, if anything."""
        if self.closed:
            raise ServiceUnavailable("The server is shutting down.", headers={"Retry-After": "5"})
        if self._count >= self.max_subscribers:
            raise ServiceUnavailable(
                "Too many live update streams on this server.", headers={"Retry-After": "30"}
            )
        if self._by_sub.get(sub, 0) >= self.max_per_subject:
            raise TooManyRequests(
                f"Too many live update streams open for this user (at most"
                f" {self.max_per_subject}): close some tabs.",
                headers={"Retry-After": "30"},
            )
        subscription = Subscription(group_id, self.event_id, sub=sub, expires_at=expires_at)
        if last_event_id and self._missed(group_id, last_event_id):
            ticks = [
                t for t in (self._last_tick.get(group_id), self._last_tick_all) if t is not None
            ]
            subscription.notify(max(ticks, default=None), self.event_id)
        self._by_group.setdefault(group_id, set()).add(subscription)
        self._by_sub[sub] = self._by_sub.get(sub, 0) + 1
        self._count += 1
        return subscription

    def _missed(self, group_id: str, last_event_id: str) -> bool:
        instance, _, seen = last_event_id.partition("-")
        # Only an id this hub handed out says what the client saw (one past its count cannot
        # be; a long digit string would not even convert).
        if not (instance == self.instance and seen.isascii() and seen.isdigit() and len(seen) < 19):
            return True
        count = int(seen)
        changed = max(self._changed.get(group_id, 0), self._changed_all)
        return count > self.published or changed > count

    def unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._by_group.get(subscription.group_id)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._by_group[subscription.group_id]
        left = self._by_sub[subscription.sub] - 1
        if left:
            self._by_sub[subscription.sub] = left
        else:
            del self._by_sub[subscription.sub]
        self._count -= 1

    def close(self) -> None:
        """End every stream and refuse new ones (the process is stopping)."""
        self.closed = True
        for subscriptions in self._by_group.values():
            for subscription in subscriptions:
                subscription.close()

    async def events(self, subscription: Subscription) -> AsyncIterator[bytes]:
        """The stream's bytes: the opening block, then changes and pings."""
        yield subscription.opening()
        while not subscription.closed:
            left = math.inf
            if subscription.expires_at is not None:
                left = subscription.expires_at - time.time()
                if left <= 0:
                    return  # the token expired: the client comes back with a fresh one
            # Re-read each time: tests shorten the interval on a running hub.
            ping = self.ping_seconds
            if not await subscription.wait(min(ping, left)):
                if left > ping:
                    yield _PING
            elif subscription.pending and not subscription.closed:
                yield subscription.take()


class EventStream(StreamingResponse):
    """A text/event-stream answer that leaves the hub whatever happens, even when the client
    went before the first byte (a generator that never started runs no `finally`)."""

    media_type = "text/event-stream"

    def __init__(self, hub: StatsEventHub, subscription: Subscription) -> None:
        super().__init__(hub.events(subscription), headers=STREAM_HEADERS)
        self.hub = hub
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.subscription)


async def follow_group(
    db: Database,
    cache: ResponseCache,
    hub: StatsEventHub,
    scope: AccessScope,
    group_id: str,
    last_event_id: str | None,
) -> EventStream:
    """The group's event stream, after the checks of GET /stats/groups/{id} (404 when off).

    The checks read through the stats cache and hand their connection back before the stream
    starts: an open stream holds no database connection.
    """
    if not hub.enabled:
        raise NotFound(LIVE_UPDATES_OFF)
    await service.read_group(db, cache, scope, group_id)
    subscription = hub.subscribe(
        group_id,
        (last_event_id or "").strip() or None,
        sub=scope.sub,
        expires_at=scope.expires_at,
    )
    return EventStream(hub, subscription)


# How soon after the API starts, and how often then, it looks for an analytics worker that
# follows ingestion (not at once: the demo starts the worker beside the API).
LIVE_WORKER_FIRST_CHECK_SECS = 30.0
LIVE_WORKER_CHECK_SECS = 60.0


async def watch_live_worker(db: Database) -> None:
    """With live updates on, warn while no analytics worker listens for ingested attempts (one
    started without REPORTING_ENABLE_LIVE_UPDATES ticks hourly: the streams stay silent and the
    numbers still, and nothing said why). Runs until cancelled."""
    await asyncio.sleep(LIVE_WORKER_FIRST_CHECK_SECS)
    warned = False
    while True:
        try:
            async with db.pool.connection(timeout=5) as conn:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = %s AND datname = current_database()",
                    (channels.LIVE_LISTENER_APPLICATION_NAME,),
                )
                row = await cursor.fetchone()
            listening = bool(row and row[0])
            if not listening and not warned:
                log.warning(
                    "live updates are on, but no analytics worker follows ingestion: start"
                    " reporting-worker with REPORTING_ENABLE_LIVE_UPDATES=true too (until then"
                    " numbers change only at its scheduled ticks)"
                )
            elif listening and warned:
                log.info("an analytics worker follows ingestion again")
            warned = not listening
        except Exception as error:  # the database is down: /readyz and the requests say so
            log.debug("cannot look for the live worker", extra={"error": str(error)})
        await asyncio.sleep(LIVE_WORKER_CHECK_SECS)


_Handler = Callable[[int, FrameType | None], object]


@contextlib.contextmanager
def closed_on_exit_signals(hub: StatsEventHub) -> Iterator[None]:
    """While open, SIGTERM and SIGINT also close the hub, then run the handler that was there.

    Meant for the app's lifespan, inside uvicorn's own signal capture: uvicorn's graceful stop
    waits for open responses, so the streams must end first. Signals that nobody turns into a
    graceful stop (default or ignored dispositions) and other threads are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def close_soon() -> None:
        try:
            loop.call_soon_threadsafe(hub.close)
        except RuntimeError:
            pass  # the loop is closed: nothing left to end

    installed: dict[int, tuple[_Handler, _Handler]] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(sig: int, frame: FrameType | None, previous: _Handler = previous) -> None:
            # A signal handler may interrupt the loop anywhere: schedule, never touch it here.
            close_soon()
            previous(sig, frame)

        signal.signal(signum, handler)
        installed[signum] = (handler, previous)
    try:
        yield
    finally:
        for installed_signum, (ours, theirs) in installed.items():
            if signal.getsignal(installed_signum) is ours:
                signal.signal(installed_signum, theirs)
