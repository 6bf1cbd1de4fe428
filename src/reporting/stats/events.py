"""GET /stats/groups/{id}/events: the worker's `stats_changed` notifications, fanned out to the
Server-Sent Event streams open in this process.

No connection of its own: `StatsChangeListener` (cache.py) holds the process's one LISTEN and
hands every payload to `StatsEventHub.publish` right after the cache dropped what it names, so a
page that refetches on the event never gets the stale answer. A stream is a `Subscription` to one
group holding at most one pending change: a newer tick overwrites an unsent one (a dashboard only
needs "changed"), so a slow or stalled client costs constant memory. At most `MAX_SUBSCRIBERS`
streams per process; beyond that 503.

An event's id is the worker's tick, and the opening block carries the newest tick the process
knows of. A client that reconnects with a Last-Event-ID (EventSource does, after a dropped
connection) is told at once of what changed for its group meanwhile: a later tick, or a change
without a tick (a directory upsert; a gap of the listener).

A stream ends when its client goes (Starlette cancels it on http.disconnect) or when the hub
closes. uvicorn waits for open responses before it shuts the app down, and an event stream never
finishes by itself, so SIGTERM/SIGINT close the hub first (`closed_on_exit_signals`).
"""

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from reporting.auth.scope import Scope as AccessScope
from reporting.db.engine import Database
from reporting.errors import NotFound, ServiceUnavailable
from reporting.stats import service
from reporting.stats.cache import ResponseCache, changed_groups

# Under the 30-60 s idle timeouts of common proxies and load balancers.
PING_SECONDS = 15.0
RETRY_MILLISECONDS = 3000
# Each stream is a socket and a few hundred bytes here; the cap keeps a reconnect storm or a
# leaky client from taking the process's file descriptors.
MAX_SUBSCRIBERS = 1000
# Ticks whose arrival time is kept (for reconnecting streams, see StatsEventHub): hours of live
# ticks; a Last-Event-ID older than those is treated as unknown.
REMEMBERED_TICKS = 10_000

LIVE_UPDATES_OFF = "Live updates are off on this server (REPORTING_ENABLE_LIVE_UPDATES=false)."
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx would otherwise hold the events back in its buffer.
    "X-Accel-Buffering": "no",
}
_HELLO = f": stats_changed events\nretry: {RETRY_MILLISECONDS}\n"
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
    """One stream's view of one group: whether a change is unsent, and the newest tick seen."""

    __slots__ = ("_wake", "baseline", "closed", "group_id", "pending", "tick_id")

    def __init__(self, group_id: str, baseline: int | None = None) -> None:
        self.group_id = group_id
        # The newest tick this process had seen when the stream opened: the opening block's
        # event id, so even a client that gets no event before it reconnects has one to send.
        self.baseline = baseline
        self.tick_id: int | None = None
        self.pending = False
        self.closed = False
        self._wake = asyncio.Event()

    def notify(self, tick_id: int | None) -> None:
        if tick_id is not None and (self.tick_id is None or tick_id > self.tick_id):
            self.tick_id = tick_id
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

    def hello(self) -> bytes:
        """The opening block: a comment, the retry delay and the baseline event id."""
        event_id = "" if self.baseline is None else f"id: {self.baseline}\n"
        return f"{_HELLO}{event_id}\n".encode()

    def take(self) -> bytes:
        """The pending change as one SSE event (and nothing pending any more)."""
        self.pending = False
        data = json.dumps({"group_id": self.group_id, "tick_id": self.tick_id})
        event = f"event: stats_changed\ndata: {data}\n\n"
        return (event if self.tick_id is None else f"id: {self.tick_id}\n{event}").encode()


class StatsEventHub:
    """The process's open event streams, by group; fed by the stats_changed listener."""

    def __init__(
        self,
        *,
        enabled: bool = False,
        max_subscribers: int = MAX_SUBSCRIBERS,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self.enabled = enabled
        self.max_subscribers = max_subscribers
        self.ping_seconds = ping_seconds
        self.closed = False
        self.published = 0
        self._by_group: dict[str, set[Subscription]] = {}
        self._count = 0
        # The newest tick seen per group and for "every group": a stream that reconnects with
        # an older Last-Event-ID is told at once about the change it missed in between.
        self._last_tick: dict[str, int] = {}
        self._last_tick_all: int | None = None
        # Changes without a tick (a directory upsert, a listener gap) carry no event id to
        # compare: which publish brought each here, and each tick, so a stream that reconnects
        # after one is told too (when its Last-Event-ID is a tick this process never saw, it is
        # told anyway: one needless reload rather than a page left stale).
        self._unnumbered_at: dict[str, int] = {}
        self._unnumbered_all_at: int | None = None
        self._tick_seen_at: dict[int, int] = {}
        self._newest_tick: int | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def newest_tick(self) -> int | None:
        """The newest tick this process was told of (new streams open with it as their id)."""
        return self._newest_tick

    def publish(self, payload: str | None) -> None:
        """A stats_changed payload; None when changes may have been missed (the listener came
        back after a gap): every stream is told that everything changed."""
        change = StatsChange(None, None) if payload is None else parse_change(payload)
        self.published += 1
        tick = change.tick_id
        order = self.published  # which change came first, for _replay_missed
        if tick is not None:
            self._newest_tick = max(tick, self._newest_tick or 0)
            self._tick_seen_at.setdefault(tick, order)
            while len(self._tick_seen_at) > REMEMBERED_TICKS:
                del self._tick_seen_at[next(iter(self._tick_seen_at))]
        if change.group_ids is None:
            if tick is not None:
                self._last_tick_all = max(tick, self._last_tick_all or 0)
            else:
                self._unnumbered_all_at = order
            for subscriptions in self._by_group.values():
                for subscription in subscriptions:
                    subscription.notify(tick)
            return
        for group_id in change.group_ids:
            if tick is not None:
                self._last_tick[group_id] = max(tick, self._last_tick.get(group_id, 0))
            else:
                self._unnumbered_at[group_id] = order
            for subscription in self._by_group.get(group_id, ()):
                subscription.notify(tick)

    def subscribe(self, group_id: str, last_event_id: int | None = None) -> Subscription:
        """A new stream of `group_id`; 503 when the process is full or shutting down."""
        if self.closed:
            raise ServiceUnavailable("The server is shutting down.", headers={"Retry-After": "5"})
        if self._count >= self.max_subscribers:
            raise ServiceUnavailable(
                "Too many live update streams on this server.", headers={"Retry-After": "30"}
            )
        subscription = Subscription(group_id, baseline=self._newest_tick)
        if last_event_id is not None:
            self._replay_missed(subscription, last_event_id)
        self._by_group.setdefault(group_id, set()).add(subscription)
        self._count += 1
        return subscription

    def _replay_missed(self, subscription: Subscription, last_event_id: int) -> None:
        """Tell a stream that reconnected after `last_event_id` of what changed since."""
        group_id = subscription.group_id
        ticks = [t for t in (self._last_tick.get(group_id), self._last_tick_all) if t is not None]
        if ticks and max(ticks) > last_event_id:
            subscription.notify(max(ticks))
        unnumbered = [
            t for t in (self._unnumbered_at.get(group_id), self._unnumbered_all_at) if t is not None
        ]
        if unnumbered:
            since = self._tick_seen_at.get(last_event_id)
            if since is None or max(unnumbered) > since:
                subscription.notify(None)

    def unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._by_group.get(subscription.group_id)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            del self._by_group[subscription.group_id]
        self._count -= 1

    def close(self) -> None:
        """End every stream and refuse new ones (the process is stopping)."""
        self.closed = True
        for subscriptions in self._by_group.values():
            for subscription in subscriptions:
                subscription.close()

    async def events(self, subscription: Subscription) -> AsyncIterator[bytes]:
        """The stream's bytes: the opening block, then changes and pings."""
        yield subscription.hello()
        while not subscription.closed:
            # Re-read each time: tests shorten the interval on a running hub.
            if not await subscription.wait(self.ping_seconds):
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


def _event_id(last_event_id: str | None) -> int | None:
    value = (last_event_id or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


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
    return EventStream(hub, hub.subscribe(group_id, _event_id(last_event_id)))


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
