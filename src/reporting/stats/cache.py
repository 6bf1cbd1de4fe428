"""The serialized answers of GET /stats/*, kept in process and dropped when the worker says so.

`ResponseCache` maps a key (route, entity, and the caller's view where views differ) to the JSON
bytes of the answer and their ETag. It holds entries only while `StatsChangeListener` is
listening on `stats_changed`: an entry is dropped by the notification that names one of its
groups (or by any notification if it depends on the whole school). While the listener is
disconnected nothing is cached, and everything is dropped when it reconnects.

An invalidated entry is refilled before it is answered, so a reader right after a change sees
the change. One case is different: a change of more than BIG_CHANGE_PAGES pages (a full tick
changes every group's) while a fill is already running. Then an invalidated page is served once
more, while at most BACKGROUND_REFRESH_LIMIT background refreshes renew the pages one by one,
until few enough are left. Measured at 2,000 pages and 64 connections
(bench/bench_api_under_tick.py): refilling every page before answering it made p99 ~900 ms for
the 25 s the refill took (and ~110 ms with eight fills at a time), against ~13 ms this way.
Below that size, waiting for the fills costs little, and readers asking at once right after a
tick (a client reading a group's pages in parallel) all see it: with the stale answers allowed
for any change, fifteen such readers got twelve pages as they were before the tick.

As a safety net for a change that came without a notification, an entry is refreshed once it is
older than `ttl_seconds` (jittered, so pages filled together do not all refresh together): the
request that finds it so still gets the old bytes and starts the refresh in the background, so
the refresh never adds to anybody's latency. Five minutes by default: a refresh of a large group
page costs ~10 ms of CPU, and 2,000 pages refreshed every minute took a third of a core. A hard deadline (a leaderboard's expiry) is never
passed: such an entry is dropped, not served.

A reader that knows the page changed asks for it with `Cache-Control: no-cache` (the dashboard
does when a live update tells it so) and always gets it refilled: served stale, it would show the
old numbers with no later event to correct them.

The cache never decides who may read what: callers check the scope first and fill it through
the scope's own query. Concurrent misses of one key share one fill.
"""

import asyncio
import gzip
import hashlib
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import psycopg

from reporting.db import channels
from reporting.errors import ReportingError

log = logging.getLogger(__name__)

LISTENER_APPLICATION_NAME = "reporting-stats-listener"


@dataclass(frozen=True, slots=True)
class CachedBody:
    """The JSON bytes and, for answers worth compressing, their gzip form (each with its ETag)."""

    body: bytes
    etag: str
    gzip_body: bytes | None = None
    gzip_etag: str | None = None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzip_body or b"")


# Under this size gzip saves less than its own cost.
GZIP_MIN_BYTES = 1024
# Invalidated pages beyond which a change is big, and fills running at once beyond which a page
# of a big change is served stale (see the docstring); background refreshes at once at most.
BIG_CHANGE_PAGES = 64
FRESH_FILL_LIMIT = 1
BACKGROUND_REFRESH_LIMIT = 2


async def cached_body(body: bytes) -> CachedBody:
    """Compressed once per fill, off the event loop: a 150 KiB page takes a few ms to gzip."""
    etag = etag_of(body)
    if len(body) < GZIP_MIN_BYTES:
        return CachedBody(body, etag)
    compressed = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
    return CachedBody(body, etag, compressed, etag[:-1] + '-gzip"')


@dataclass(frozen=True, slots=True)
class Filled:
    """What a fill produced: the bytes, the groups they depend on (None: the whole school), and
    optionally how many seconds at most they stay true (a leaderboard's expiry)."""

    body: bytes
    groups: frozenset[str] | None
    max_age_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    future: "asyncio.Future[CachedBody]"
    generation: int


@dataclass(slots=True)
class _Entry:
    cached: CachedBody
    groups: frozenset[str] | None
    refresh_at: float
    deadline: float
    invalidated: bool = False  # a notification said it changed: kept only as a fallback


Fill = Callable[[], Awaitable[Filled]]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


class ResponseCache:
    def __init__(
        self,
        *,
        ttl_seconds: float = 300.0,
        max_bytes: int = 512 * 2**20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._pending: dict[Hashable, _Pending] = {}
        self._refreshes: set[asyncio.Task[CachedBody]] = set()
        # Bumped by every invalidation: a fill that started before one must not be stored.
        self._generation = 0
        self._invalidated = 0  # entries marked invalidated and not refilled or dropped since
        self.active = False
        self.hits = 0
        self.misses = 0
        self.refreshes = 0
        self.served_stale = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def activate(self) -> None:
        """The invalidation channel is live: start caching from an empty cache."""
        self.clear()
        self.active = True

    def deactivate(self) -> None:
        """The invalidation channel is down: serve and store nothing until it is back."""
        self.active = False
        self.clear()
        for task in self._refreshes:
            task.cancel()

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._bytes = 0
        self._invalidated = 0

    def invalidate(self, group_ids: Iterable[str] | None) -> int:
        """Mark what depends on these groups (None: everything) as changed; returns how many
        entries that was. They are no longer current (`get` answers None for them)."""
        changed = None if group_ids is None else frozenset(group_ids)
        self._generation += 1
        count = 0
        for entry in self._entries.values():
            if changed is None or entry.groups is None or not entry.groups.isdisjoint(changed):
                if not entry.invalidated:
                    entry.invalidated = True
                    self._invalidated += 1
                count += 1
        return count

    def get(self, key: Hashable) -> CachedBody | None:
        """The stored answer, due for a refresh or not; None when absent, invalidated or past its
        deadline."""
        entry = self._entry(key)
        return entry.cached if entry is not None and not entry.invalidated else None

    async def get_or_fill(self, key: Hashable, fill: Fill, *, fresh: bool = False) -> CachedBody:
        """The cached answer, else the one `fill` makes (stored when still current).

        `fresh`: the reader was told this changed (a live dashboard reloading on a change): an
        invalidated entry is refilled for it however busy the cache is, never served stale.
        """
        entry = self._entry(key)
        if (
            entry is not None
            and entry.invalidated
            and not fresh
            and self._invalidated > BIG_CHANGE_PAGES
            and len(self._pending) >= FRESH_FILL_LIMIT
        ):
            # Busy refilling after a big change: this page's previous answer, once more.
            self.served_stale += 1
            if key not in self._pending and len(self._refreshes) < BACKGROUND_REFRESH_LIMIT:
                self._refresh_in_background(key, fill)
            return entry.cached
        if entry is not None and not entry.invalidated:
            self.hits += 1
            if entry.refresh_at <= self._clock() and key not in self._pending:
                self._refresh_in_background(key, fill)
            return entry.cached
        while (pending := self._pending.get(key)) is not None:
            if pending.generation != self._generation:
                break  # it started before the last invalidation: read afresh
            try:
                return await asyncio.shield(pending.future)
            except asyncio.CancelledError:
                # The fill we waited for was cancelled with its request: try again ourselves.
                if not pending.future.cancelled():
                    raise
        self.misses += 1
        return await self._fill(key, self._claim(key), fill)

    def _entry(self, key: Hashable) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.deadline <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _claim(self, key: Hashable) -> _Pending:
        """Register a fill of `key` at once (before any await), so nobody starts a second one."""
        pending = _Pending(asyncio.get_running_loop().create_future(), self._generation)
        self._pending[key] = pending
        return pending

    async def _fill(self, key: Hashable, pending: _Pending, fill: Fill) -> CachedBody:
        future = pending.future
        try:
            filled = await fill()
            cached = await cached_body(filled.body)
            if self.active and pending.generation == self._generation:
                self._store(key, cached, filled)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            if self._pending.get(key) is pending:
                del self._pending[key]
        future.set_result(cached)
        return cached

    def _refresh_in_background(self, key: Hashable, fill: Fill) -> None:
        self.refreshes += 1
        task = asyncio.get_running_loop().create_task(self._fill(key, self._claim(key), fill))
        self._refreshes.add(task)
        task.add_done_callback(lambda done: self._refreshed(key, done))

    def _refreshed(self, key: Hashable, task: asyncio.Task[CachedBody]) -> None:
        self._refreshes.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # Gone or failing now: the next request fills (and answers) for itself.
            self._drop(key)
            if not isinstance(error, ReportingError):
                log.warning("stats cache refresh failed", exc_info=error)

    def _store(self, key: Hashable, cached: CachedBody, filled: Filled) -> None:
        size = cached.size
        if size > self.max_bytes:
            return
        now = self._clock()
        deadline = math.inf
        if filled.max_age_seconds is not None:
            if filled.max_age_seconds <= 0:
                return
            deadline = now + filled.max_age_seconds
        self._drop(key)
        refresh_at = now + self.ttl_seconds * random.uniform(0.8, 1.0)
        self._entries[key] = _Entry(cached, filled.groups, refresh_at, deadline)
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.cached.size
            if entry.invalidated:
                self._invalidated -= 1


# NOTIFY payloads must stay under 8000 bytes: beyond this, "every group" (null) is sent instead.
NOTIFY_MAX_BYTES = 7000


def change_payload(group_ids: Iterable[str] | None, **details: object) -> str:
    """A `stats_changed` payload naming the groups that changed (None: everything), as
    `changed_groups` reads it; `details` (the tick, its mode) come first."""
    ids = None if group_ids is None else list(group_ids)
    payload = json.dumps({**details, "group_ids": ids})
    if len(payload.encode()) > NOTIFY_MAX_BYTES:
        payload = json.dumps({**details, "group_ids": None})
    return payload


def changed_groups(payload: str) -> list[str] | None:
    """The group ids a `stats_changed` payload names; None means everything changed.

    Anything unreadable counts as "everything": dropping too much is only slower.
    """
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    group_ids = message.get("group_ids") if isinstance(message, dict) else None
    if isinstance(group_ids, list) and all(isinstance(g, str) for g in group_ids):
        return group_ids
    return None


class StatsChangeListener:
    """LISTEN stats_changed on a dedicated connection and invalidate the cache; reconnects.

    `on_change` (the live-update streams) gets every payload after the cache dropped what it
    names, and None after a reconnect, when changes may have passed unheard. It must not block.
    """

    def __init__(
        self,
        url: str,
        cache: ResponseCache,
        *,
        on_change: Callable[[str | None], None] | None = None,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
    ) -> None:
        self.url = url
        self.cache = cache
        self.on_change = on_change
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.notifications = 0
        self.connects = 0
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start listening; waits (bounded) for the first LISTEN so the cache is live at once."""
        self._task = asyncio.create_task(self._run(), name="stats-change-listener")
        try:
            await asyncio.wait_for(self._listening.wait(), wait_seconds)
        except TimeoutError:
            log.warning("stats_changed listener not connected yet; the stats cache is off")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.cache.deactivate()

    async def _run(self) -> None:
        delay = self.retry_seconds
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=LISTENER_APPLICATION_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {channels.STATS_CHANGED}")
                    self.connects += 1
                    # Whatever changed while we were not listening is unknown: start empty.
                    self.cache.activate()
                    self._listening.set()
                    delay = self.retry_seconds
                    if self.connects > 1 and self.on_change is not None:
                        self.on_change(None)
                    async for notify in conn.notifies():
                        self.notifications += 1
                        self.cache.invalidate(changed_groups(notify.payload))
                        if self.on_change is not None:
                            self.on_change(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "stats_changed listener lost its connection; retrying",
                    extra={"error": f"{type(error).__name__}: {error}", "retry_in": delay},
                )
            self.cache.deactivate()
            self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_seconds)
