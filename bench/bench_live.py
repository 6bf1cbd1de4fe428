"""Live updates: how soon streamed-in attempts reach a group's stats, and what it costs the API.

Target (issue 6): flag on, ingesting 1,000 attempts/s steadily for 60 s: stats lag <= 5 s at
p99, API p99 unchanged within 20%.

The school is bench_seed.py's, kept as a database (default `bench10m`: 10M attempts, 100k
students, 2,000 groups) on DATABASE_URL's server (default the local PostgreSQL on 127.0.0.1:5432).
`reporting-worker --once` first makes sure the derived records and the running sums exist (a
full tick, ~45 s, when the sums are not valid; else an incremental one). Then, as real
processes: `reporting serve` (as bench_api.py starts it) and `reporting-worker` with
REPORTING_ENABLE_LIVE_UPDATES=true and REPORTING_WORKER_INTERVAL_SECS=3600, so every tick in the
window is a live, incremental one.

1. Phase A (baseline, nothing ingested): after a pass over every group (a warm cache), wrk
   rotates over every group as bench_api.py does (each group's teacher, a browser's
   Accept-Encoding) for --wrk-duration seconds.
2. Phase B (--duration seconds): a loader POSTs --batches-per-second batches of --batch-size
   attempts to /ingest/attempts (a service token) on a fixed schedule. The attempts are new (event
   ids `live-<timestamp>-<batch>-<n>`), each by a student of one of --groups active groups in the
   student's own group, --groups-per-batch groups a batch (as a platform flushing what its classes
   do). Meanwhile the same wrk run as phase A covers the middle --wrk-duration seconds, and two
   probes measure each batch's lag from its POST returning until group g (one of the batch's
   groups) shows total_attempts >= what it must hold after that batch (its total read before
   phase B + what was posted to it since):
   - as a live dashboard sees it: the event stream of every active group is held open
     (GET /stats/groups/{g}/events, each with its group's teacher's token), and when g's stream
     tells of a change, GET /stats/groups/{g} with `Cache-Control: no-cache` (what the
     dashboard sends then);
   - at the table: materialized_stats polled every --poll-interval seconds (a lag is an upper
     bound by that much): when the worker's tick has written the batch (what the issue names).
   A batch not seen after --lag-timeout seconds counts as missed (an infinite lag).

With --no-ticks, no analytics worker runs in phase B: the same attempts are ingested and nothing
folds them, so no lag is measured. What remains of the API's p99 change is what the ingestion
alone costs the API on this machine, which any way of keeping the stats live has to pay: the floor
of the "API p99 unchanged within 20%" target.

With --pace-ms, each wrk connection pauses between requests: a steady load the API can serve
(64 connections pausing 40 ms offer ~1,500 req/s, 40% of what one API process takes), as a
school's dashboards make it. Without it wrk takes everything the API can give, and on 2 cores
anything else that runs (ingestion, the ticks) shows in the API's p99 however it is scheduled.

The figures: achieved ingest rate, lag p50/p95/p99/max, API p99 baseline vs during, the live
ticks (worker_ticks rows of mode `incremental` in the window) and PASS/FAIL for both targets.
Afterwards the run's attempts are deleted and `aggregate_state.directory_version` bumped: the
running sums no longer match the attempts, so the next tick of any benchmark is a full one.

The machine has 2 cores shared by the API, the worker, PostgreSQL, wrk and this script; the load
average before and after is printed. Another analytics worker ticking in the window (another
benchmark's) holds the worker lock and delays the live ticks: such ticks are reported. While this
runs, the school holds more than 10M attempts, so a benchmark that starts then and asks
bench_seed.py for it stops with "does not hold this school".

    .venv/bin/python bench/bench_live.py [--duration 60] [--database bench10m]
    .venv/bin/python bench/bench_live.py --pace-ms 40    # a steady ~1,500 req/s, not saturation
    .venv/bin/python bench/bench_live.py --attempts 1000000 --database bench1m --duration 10
"""

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import BROWSER_ACCEPT_ENCODING, WrkResult, rotation_script, run_wrk, serve
from bench_api_under_tick import warm
from bench_incremental import remove_added_attempts
from bench_seed import FULL, seeded_database
from bench_tick import machine

from reporting.auth.tokens import issue_token
from reporting.settings import AuthSettings

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LAG_P99_TARGET_S = 5.0
API_P99_RATIO_TARGET = 1.2
WORKER = Path(sys.executable).parent / "reporting-worker"
PREPARE_TIMEOUT_S = 600.0
WORKER_READY_TIMEOUT_S = 30.0
QUEUE_EMPTY_TIMEOUT_S = 60.0
# POSTs in flight at once: a slow one does not push the schedule back, a stuck server does.
MAX_POSTS_IN_FLIGHT = 8
LIVE_ENV = {
    "REPORTING_ENABLE_LIVE_UPDATES": "true",
    "REPORTING_WORKER_INTERVAL_SECS": "3600",
}


@dataclass(frozen=True)
class Batch:
    """One prepared POST body and what the probe expects of it."""

    index: int
    body: bytes
    probe_group: str
    expected_total: int  # probe_group's total_attempts once this batch is counted
    attempts: int


@dataclass
class Pending:
    batch: int
    expected: int
    started_at: float  # time.monotonic() when the POST started
    posted_at: float  # time.monotonic() when it returned


@dataclass
class LoadResult:
    batches: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    post_seconds: list[float] = field(default_factory=list)
    late_starts: int = 0  # batches that started more than 50 ms behind their schedule
    seconds: float = 0.0


@dataclass(frozen=True)
class Ticks:
    """The analytics ticks recorded in the window, live (incremental) and other."""

    incremental: int
    attempts_folded: int
    seconds: list[float]
    phase_medians: dict[str, float]
    others: list[str]  # full/skipped/error ticks in the window: not this run's live ticks


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def lag_quantiles(lags: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 for the JSON summary; None where a missed batch (an infinite lag) falls."""
    return {
        f"p{q}": None if math.isinf(value) else value
        for q in (50, 95, 99)
        for value in [percentile(lags, q)]
    }


class LagProbe:
    """Watches the groups that have batches not yet seen in their totals: reads a group's total
    through `read_total` (None when a read failed) whenever `wait` says a read is due (it returns
    False when it only timed out, and then only the timeouts are checked)."""

    def __init__(
        self,
        read_total: Callable[[str], Awaitable[int | None]],
        wait: Callable[[str], Awaitable[bool]],
        timeout: float,
    ) -> None:
        self.read_total = read_total
        self.wait = wait
        self.timeout = timeout
        self.pending: dict[str, list[Pending]] = defaultdict(list)
        self.samples: list[tuple[float, float]] = []  # (posted_at, lag; inf when missed)
        self.polls = 0
        self.poll_errors: list[str] = []
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def expect(self, group_id: str, pending: Pending) -> None:
        self.pending[group_id].append(pending)
        if group_id not in self._watchers:
            self._watchers[group_id] = asyncio.create_task(self._watch(group_id))

    async def drain(self) -> None:
        """Until every pending batch is seen or missed (each gives up after `timeout`)."""
        while self._watchers:
            await asyncio.gather(*self._watchers.values())

    async def _watch(self, group_id: str) -> None:
        read = True
        while self.pending[group_id]:
            total = None
            if read:
                self.polls += 1
                try:
                    total = await self.read_total(group_id)
                except (httpx.HTTPError, psycopg.Error) as error:
                    self.poll_errors.append(f"{type(error).__name__}: {error}")
            seen_at = time.monotonic()
            waiting = []
            for p in self.pending[group_id]:
                if total is not None and total >= p.expected:
                    self.samples.append((p.posted_at, seen_at - p.posted_at))
                elif seen_at - p.posted_at > self.timeout:
                    self.samples.append((p.posted_at, math.inf))
                else:
                    waiting.append(p)
            self.pending[group_id] = waiting
            if waiting:
                read = await self.wait(group_id)
        # No await since the loop's test: nothing was added in between.
        del self._watchers[group_id]

    @property
    def lags(self) -> list[float]:
        """Of the batches seen."""
        return [lag for _, lag in self.samples if not math.isinf(lag)]

    @property
    def missed(self) -> int:
        return sum(1 for _, lag in self.samples if math.isinf(lag))

    def all_lags(self) -> list[float]:
        return [lag for _, lag in self.samples]

    def split(self, window: tuple[float, float]) -> tuple[list[float], list[float]]:
        """The lags of batches posted while wrk ran, and of the others."""
        inside = [lag for at, lag in self.samples if window[0] <= at <= window[1]]
        outside = [lag for at, lag in self.samples if not window[0] <= at <= window[1]]
        return inside, outside


def every(seconds: float) -> Callable[[str], Awaitable[bool]]:
    """Polling: a read is due every `seconds`."""

    async def wait(group_id: str) -> bool:
        await asyncio.sleep(seconds)
        return True

    return wait


class GroupEvents:
    """The groups' event streams (GET /stats/groups/{id}/events), held open as a live dashboard
    holds its group's: `wait` says a read is due when the group's stream has told of a change."""

    def __init__(self, client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens
        self.changed = {g: asyncio.Event() for g in tokens}
        self.last_event_at = dict.fromkeys(tokens, -math.inf)
        self.events = 0
        self.errors: list[str] = []
        self._streams: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Every stream open (its response begun) before this returns."""
        opened = [asyncio.Event() for _ in self.changed]
        self._streams = [
            asyncio.create_task(self._follow(g, ready))
            for g, ready in zip(self.changed, opened, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in opened)), 60)
        if self.errors:
            raise SystemExit(f"cannot open the event streams: {self.errors[0]}")

    async def close(self) -> None:
        for task in self._streams:
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)

    async def _follow(self, group_id: str, ready: asyncio.Event) -> None:
        url = f"/stats/groups/{group_id}/events"
        headers = {"Authorization": f"Bearer {self.tokens[group_id]}"}
        try:
            async with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code != 200:
                    self.errors.append(f"{group_id}: {response.status_code}")
                    return
                ready.set()
                async for line in response.aiter_lines():
                    if line == "event: stats_changed":
                        self.events += 1
                        self.last_event_at[group_id] = time.monotonic()
                        self.changed[group_id].set()
                self.errors.append(f"{group_id}: the server ended the stream")
        except httpx.HTTPError as error:
            self.errors.append(f"{group_id}: {type(error).__name__}: {error}")
        finally:
            ready.set()

    def posted(self, group_id: str, pending: Pending) -> None:
        """A batch the group's stream may already have told of (a tick counted it before its
        POST returned): read once more rather than wait for an event that has passed."""
        if self.last_event_at[group_id] >= pending.started_at:
            self.changed[group_id].set()

    async def wait(self, group_id: str) -> bool:
        try:
            await asyncio.wait_for(self.changed[group_id].wait(), 1.0)
        except TimeoutError:
            return False
        self.changed[group_id].clear()
        return True


def page_totals(client: httpx.AsyncClient, token: str) -> Callable[[str], Awaitable[int | None]]:
    """A group's total as GET /stats/groups/{id} answers a reader told of a change (an admin's
    token; `Cache-Control: no-cache`, as the dashboard sends on a live event)."""
    headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}

    async def read(group_id: str) -> int | None:
        response = await client.get(f"/stats/groups/{group_id}", headers=headers)
        if response.status_code != 200:
            raise httpx.HTTPError(f"{response.status_code} {response.text[:200]}")
        return total_of(response.json())

    return read


def table_totals(conn: psycopg.AsyncConnection[Any]) -> Callable[[str], Awaitable[int | None]]:
    """A group's total as materialized_stats holds it (what the worker's ticks wrote)."""

    async def read(group_id: str) -> int | None:
        cur = await conn.execute(
            "SELECT (metrics->>'total_attempts')::bigint FROM materialized_stats"
            " WHERE type = 'group' AND entity_id = %s",
            (group_id,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    return read


def total_of(page: dict[str, object]) -> int:
    stats = page.get("stats")
    if not isinstance(stats, dict):
        return 0  # never ticked
    return int(stats["metrics"]["total_attempts"])


def prepare_sums(url: str) -> None:
    """`reporting-worker --once` until the running sums are valid (another worker holding the
    lock makes it skip: then it is tried again)."""
    env = {**os.environ, "DATABASE_URL": url}
    deadline = time.monotonic() + PREPARE_TIMEOUT_S
    while True:
        started = time.perf_counter()
        remaining = max(1.0, deadline - time.monotonic())
        result = subprocess.run([str(WORKER), "--once"], env=env, timeout=remaining, check=False)
        if result.returncode != 0:
            raise SystemExit(f"reporting-worker --once exited with {result.returncode}")
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT state_version = directory_version FROM aggregate_state"
            ).fetchone()
            tick = conn.execute(
                "SELECT status, details->>'mode' FROM worker_ticks ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is not None and row[0]:
            print(
                f"reporting-worker --once: {time.perf_counter() - started:.1f} s"
                f" (last tick: {tick[1] if tick else '?'}, {tick[0] if tick else '?'});"
                " running sums valid"
            )
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"running sums still not valid after {PREPARE_TIMEOUT_S:.0f} s")
        print("running sums not valid yet (another analytics worker holds the lock?): retrying")
        time.sleep(5)


def listeners(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database()"
            " AND application_name = 'reporting-worker-listener'"
        ).fetchone()
    return int(row[0]) if row else 0


def other_workers(url: str) -> list[str]:
    """Other analytics workers' sessions on this database (they compete for the worker lock)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid, application_name, state, left(query, 60) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'reporting-worker%'"
        ).fetchall()
    return [f"pid {r[0]} {r[1]} {r[2]}: {r[3]!r}" for r in rows]


@contextmanager
def live_worker(url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`reporting-worker` with live updates on, once its listener is connected."""
    before = listeners(url)
    env = {**os.environ, **LIVE_ENV, "DATABASE_URL": url}
    process = subprocess.Popen([str(WORKER)], env=env)
    try:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while listeners(url) <= before:
            if process.poll() is not None:
                raise SystemExit(f"reporting-worker exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"reporting-worker not listening after {WORKER_READY_TIMEOUT_S} s")
            time.sleep(0.2)
        yield process
    finally:
        stop_worker(process)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # finishes the tick in progress (an incremental one: seconds at most)
    try:
        process.wait(timeout=30)
        return
    except subprocess.TimeoutExpired:
        pass
    print("reporting-worker still ticking 30 s after SIGTERM: a second one cancels that tick")
    process.terminate()  # the tick's statement is cancelled and it rolls back
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_queue_empty(url: str) -> None:
    """Until the live worker has folded whatever was queued before phase B."""
    deadline = time.monotonic() + QUEUE_EMPTY_TIMEOUT_S
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM attempt_queue)").fetchone()
            if row is not None and not row[0]:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"attempt_queue not empty after {QUEUE_EMPTY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)


def active_groups(url: str, count: int) -> tuple[dict[str, list[str]], list[str]]:
    """`count` groups spread over the school (every n-th by id) with their students, and the
    topic ids."""
    with psycopg.connect(url) as conn:
        all_groups = [r[0] for r in conn.execute("SELECT id FROM groups ORDER BY id")]
        step = max(1, len(all_groups) // count)
        chosen = all_groups[::step][:count]
        members: dict[str, list[str]] = {gid: [] for gid in chosen}
        for user_id, group_id in conn.execute(
            "SELECT u.id, g.id FROM user_groups ug JOIN users u ON u.key = ug.user_key"
            " JOIN groups g ON g.key = ug.group_key WHERE g.id = ANY(%s) ORDER BY u.id",
            (chosen,),
        ):
            members[group_id].append(user_id)
        topics = [r[0] for r in conn.execute("SELECT id FROM topics ORDER BY id")]
    empty = [gid for gid, users in members.items() if not users]
    if empty:
        raise SystemExit(f"groups without students: {empty[:5]}")
    return members, topics


def build_batches(
    args: argparse.Namespace,
    prefix: str,
    members: dict[str, list[str]],
    topics: list[str],
    initial: dict[str, int],
) -> list[Batch]:
    """Every batch of phase B, encoded ahead (the loader only sends), with the probe's
    expectation: the probe group's initial total plus everything posted to it up to the batch."""
    rng = random.Random(6)
    groups = list(members)
    posted: dict[str, int] = defaultdict(int)
    per_group = max(1, args.batch_size // args.groups_per_batch)
    attempted_at = datetime.now(UTC).isoformat()
    batches = []
    for b in range(args.duration * args.batches_per_second):
        first = b * args.groups_per_batch
        batch_groups = [groups[(first + i) % len(groups)] for i in range(args.groups_per_batch)]
        attempts = []
        for n in range(args.batch_size):
            group_id = batch_groups[min(n // per_group, len(batch_groups) - 1)]
            attempts.append(
                {
                    "event_id": f"{prefix}{b}-{n}",
                    "user_id": rng.choice(members[group_id]),
                    "group_id": group_id,
                    "topic_id": rng.choice(topics),
                    "task_id": f"task-{rng.randrange(30)}",
                    "is_correct": rng.random() < 0.7,
                    "score": float(rng.randrange(11)),
                    "hints_used": rng.choice((0, 0, 0, 1, 2)),
                    "time_spent_ms": rng.randrange(5_000, 120_000),
                    "attempted_at": attempted_at,
                }
            )
            posted[group_id] += 1
        probe = rng.choice(batch_groups)
        batches.append(
            Batch(
                index=b,
                body=json.dumps({"attempts": attempts}).encode(),
                probe_group=probe,
                expected_total=initial[probe] + posted[probe],
                attempts=len(attempts),
            )
        )
    return batches


async def read_totals(base: str, admin_token: str, group_ids: list[str]) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        totals = {}
        for gid in group_ids:
            response = await client.get(f"/stats/groups/{gid}", headers=headers)
            response.raise_for_status()
            totals[gid] = total_of(response.json())
    return totals


async def phase_b(
    args: argparse.Namespace,
    base: str,
    url: str,
    batches: list[Batch],
    service_token: str,
    admin_token: str,
    teacher_tokens: dict[str, str],
    script: Path,
) -> tuple[LoadResult, LagProbe, LagProbe, GroupEvents, WrkResult, tuple[float, float]]:
    """The loader, the lag probes (a live dashboard's view, the table) and wrk (the middle of the
    window), all at once."""
    load = LoadResult()
    limits = httpx.Limits(max_connections=64)
    probe_groups = sorted({batch.probe_group for batch in batches})
    async with (
        httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as poster,
        httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as reader,
        # One connection per stream, held open: no read timeout (the server pings every 15 s).
        httpx.AsyncClient(
            base_url=base,
            timeout=httpx.Timeout(30, read=None),
            limits=httpx.Limits(max_connections=len(probe_groups)),
        ) as streams,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as db,
    ):
        # Each stream with its group's teacher token, as each teacher's dashboard opens it (one
        # `sub` may hold only so many streams).
        events = GroupEvents(streams, {g: teacher_tokens[g] for g in probe_groups})
        await events.open()
        probe = LagProbe(page_totals(reader, admin_token), events.wait, args.lag_timeout)
        table_probe = LagProbe(table_totals(db), every(args.poll_interval), args.lag_timeout)
        headers = {
            "Authorization": f"Bearer {service_token}",
            "Content-Type": "application/json",
        }
        in_flight = asyncio.Semaphore(MAX_POSTS_IN_FLIGHT)

        async def post(batch: Batch) -> None:
            async with in_flight:
                started = time.monotonic()
                try:
                    response = await poster.post(
                        "/ingest/attempts", content=batch.body, headers=headers
                    )
                except httpx.HTTPError as error:
                    load.errors.append(f"batch {batch.index}: {type(error).__name__}: {error}")
                    return
                posted_at = time.monotonic()
            load.post_seconds.append(posted_at - started)
            if response.status_code != 200 or response.json().get("inserted") != batch.attempts:
                load.errors.append(
                    f"batch {batch.index}: {response.status_code} {response.text[:200]}"
                )
                return
            load.batches += 1
            load.attempts += batch.attempts
            if args.no_ticks:
                return  # nothing will fold it: no lag to wait for
            pending = Pending(batch.index, batch.expected_total, started, posted_at)
            events.posted(batch.probe_group, pending)
            probe.expect(batch.probe_group, pending)
            table_probe.expect(batch.probe_group, pending)

        wrk_delay = max(0.0, (args.duration - args.wrk_duration) / 2)
        wrk_seconds = min(args.wrk_duration, args.duration)

        window = [math.inf, math.inf]

        async def middle_wrk() -> WrkResult:
            await asyncio.sleep(wrk_delay)
            window[0] = time.monotonic()
            try:
                return await asyncio.to_thread(run_wrk, base, wrk_seconds, script)
            finally:
                window[1] = time.monotonic()

        wrk_task = asyncio.create_task(middle_wrk())
        posts = []
        started = time.monotonic()
        for batch in batches:
            due = started + batch.index / args.batches_per_second
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                load.late_starts += 1
            posts.append(asyncio.create_task(post(batch)))
        await asyncio.gather(*posts)
        load.seconds = time.monotonic() - started
        wrk = await wrk_task
        await asyncio.wait_for(
            asyncio.gather(probe.drain(), table_probe.drain()), timeout=args.lag_timeout + 30
        )
        await events.close()
    return load, probe, table_probe, events, wrk, (window[0], window[1])


def ticks_since(url: str, after_id: int) -> Ticks:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, status, details->>'mode', extract(epoch FROM finished_at - started_at),"
            " details->'durations', (details->>'attempts')::bigint"
            " FROM worker_ticks WHERE id > %s ORDER BY id",
            (after_id,),
        ).fetchall()
    live = [r for r in rows if r[1] == "success" and r[2] == "incremental"]
    phases: dict[str, list[float]] = defaultdict(list)
    for r in live:
        for name, value in dict(r[4] or {}).items():
            phases[str(name)].append(float(value))
    return Ticks(
        incremental=len(live),
        attempts_folded=sum(int(r[5] or 0) for r in live),
        seconds=[float(r[3]) for r in live if r[3] is not None],
        phase_medians={name: statistics.median(v) for name, v in phases.items()},
        others=[f"tick {r[0]}: {r[2] or '?'} {r[1]}" for r in rows if r not in live],
    )


def clean_up(url: str, prefix: str) -> int:
    """Delete the run's attempts and mark the running sums stale; returns how many went."""
    with psycopg.connect(url, autocommit=True) as conn:
        return remove_added_attempts(conn, prefix)


def wrk_line(label: str, result: WrkResult) -> str:
    return (
        f"  {label:<30}{result.requests_per_second:>9,.0f}{result.p50_ms:>9.2f}"
        f"{result.p99_ms:>9.2f}" + ("" if result.errors == "none" else f"  ({result.errors})")
    )


def print_api_table(args: argparse.Namespace, baseline: WrkResult, during: WrkResult) -> None:
    """The API's figures before and during the ingestion, one wrk run each."""
    pacing = f", {args.pace_ms} ms between a connection's requests" if args.pace_ms else ""
    print(f"GET /stats/groups/{{id}}, wrk -t2 -c64{pacing}, 1 uvicorn worker")
    print(f"  {'':<30}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(wrk_line(f"baseline ({args.wrk_duration} s)", baseline))
    print(wrk_line(f"during ingestion ({args.wrk_duration} s)", during))


def seconds_text(value: float) -> str:
    return "missed" if math.isinf(value) else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="bench10m", help="kept database of the school")
    parser.add_argument(
        "--attempts", type=int, default=FULL.attempts, help="school size (a quick check: fewer)"
    )
    parser.add_argument("--duration", type=int, default=60, help="seconds of ingestion")
    parser.add_argument("--batches-per-second", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100, help="attempts a batch")
    parser.add_argument("--groups", type=int, default=200, help="active groups")
    parser.add_argument("--groups-per-batch", type=int, default=10)
    parser.add_argument("--wrk-duration", type=int, default=20, help="seconds of each wrk run")
    parser.add_argument(
        "--pace-ms",
        type=int,
        default=0,
        help="each wrk connection pauses this long between requests: a steady load below the"
        " API's capacity (0: wrk takes all it can, and anything else on the 2 cores shows)",
    )
    parser.add_argument(
        "--no-ticks",
        action="store_true",
        help="no analytics worker in phase B: the API's cost of the ingestion alone (no lag)",
    )
    parser.add_argument("--poll-interval", type=float, default=0.2, help="lag probe, seconds")
    parser.add_argument(
        "--lag-timeout", type=float, default=30.0, help="seconds before a batch counts as missed"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run scripts/system-deps.sh")
    if min(args.duration, args.batches_per_second, args.batch_size, args.wrk_duration) < 1:
        raise SystemExit("--duration, --batches-per-second, --batch-size, --wrk-duration >= 1")
    if not 1 <= args.groups_per_batch <= min(args.groups, args.batch_size):
        raise SystemExit("need 1 <= --groups-per-batch <= --groups and --batch-size")

    # bench_seed.py and bench_api.serve read the environment; the API gets the flag too (its
    # /events route and the deployment's single environment).
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REPORTING_LOG_LEVEL", "WARNING")  # not a line per POST or tick
    os.environ.update(LIVE_ENV)
    url = seeded_database(args.database, replace(FULL, attempts=args.attempts))
    prefix = f"live-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}-"
    print(
        f"database {urlsplit(url).path.lstrip('/')} on {urlsplit(url).netloc}; run prefix {prefix}"
    )
    machine("before")
    prepare_sums(url)
    others = other_workers(url)
    if others:
        print("other analytics worker sessions on this database (they compete for the lock):")
        for line in others:
            print(f"    {line}")

    secret = secrets.token_urlsafe(32)
    auth = AuthSettings(REPORTING_JWT_SECRET=secret)
    members, topics = active_groups(url, args.groups)
    with psycopg.connect(url) as conn:
        group_ids = [r[0] for r in conn.execute("SELECT id FROM groups ORDER BY id")]
    tokens = [
        issue_token(auth, role="teacher", sub=f"bench-{gid}", group_ids=[gid], ttl_seconds=7200)
        for gid in group_ids
    ]
    service_token = issue_token(
        auth, role="service", sub="bench-live", group_ids=[], ttl_seconds=7200
    )
    admin_token = issue_token(
        auth, role="admin", sub="bench-live-admin", group_ids=[], ttl_seconds=7200
    )

    try:
        with (
            serve(url, secret) as base,
            nullcontext() if args.no_ticks else live_worker(url),
            tempfile.TemporaryDirectory() as scratch,
        ):
            script = rotation_script(
                group_ids, tokens, Path(scratch), BROWSER_ACCEPT_ENCODING, args.pace_ms
            )
            fill_s = warm(base, group_ids, tokens)
            print(
                f"cache filled in {fill_s:.1f} s; phase A: wrk -t2 -c64 -d{args.wrk_duration}s"
                + (f", each connection pausing {args.pace_ms} ms" if args.pace_ms else "")
            )
            baseline = run_wrk(base, args.wrk_duration, script)
            wait_queue_empty(url)
            initial = asyncio.run(read_totals(base, admin_token, list(members)))
            batches = build_batches(args, prefix, members, topics, initial)
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT coalesce(max(id), 0) FROM worker_ticks").fetchone()
            last_tick_id = int(row[0]) if row else 0
            print(
                f"phase B: {len(batches)} batches of {args.batch_size} attempts"
                f" ({args.batches_per_second}/s for {args.duration} s) over {len(members)} groups,"
                f" {args.groups_per_batch} a batch; wrk for the middle {args.wrk_duration} s"
            )
            load, probe, table_probe, events, during, wrk_window = asyncio.run(
                phase_b(
                    args,
                    base,
                    url,
                    batches,
                    service_token,
                    admin_token,
                    dict(zip(group_ids, tokens, strict=True)),
                    script,
                )
            )
            ticks = ticks_since(url, last_tick_id)
    finally:
        # The processes are stopped by now: nothing ticks while the attempts go.
        deleted = clean_up(url, prefix)
        print(
            f"cleaned up: deleted {deleted:,} attempts of this run ({prefix}*)"
            + (
                " and bumped aggregate_state.directory_version: the running sums no longer"
                " match, so the next tick of any benchmark on this database is a full one"
                if deleted
                else ""
            )
        )
    machine("after")

    lags = probe.all_lags()
    table_lags = table_probe.all_lags()
    rate = load.attempts / load.seconds if load.seconds > 0 else 0.0
    lag_p99 = percentile(lags, 99)
    ratio = during.p99_ms / baseline.p99_ms if baseline.p99_ms > 0 else math.inf
    if args.no_ticks:
        print()
        print(
            f"ingest only (no analytics worker): {load.attempts:,} attempts in {load.batches}"
            f" batches over {load.seconds:.1f} s = {rate:,.0f} attempts/s; POST p50"
            f" {percentile(load.post_seconds, 50) * 1000:.0f} ms, p99"
            f" {percentile(load.post_seconds, 99) * 1000:.0f} ms; {len(load.errors)} errors"
        )
        print_api_table(args, baseline, during)
        print(
            f"API p99 during ingestion alone / baseline = {ratio:.2f} (the live target allows"
            f" {API_P99_RATIO_TARGET} with the ticks too)"
        )
        return 0 if not load.errors and during.errors == "none" else 1
    lag_ok = lags != [] and lag_p99 <= LAG_P99_TARGET_S and not load.errors and not events.errors
    api_ok = ratio <= API_P99_RATIO_TARGET and during.errors == "none"
    print()
    print(
        f"ingest: {load.attempts:,} attempts in {load.batches} batches over {load.seconds:.1f} s"
        f" = {rate:,.0f} attempts/s (target {args.batches_per_second * args.batch_size:,}/s);"
        f" POST p50 {percentile(load.post_seconds, 50) * 1000:.0f} ms,"
        f" p99 {percentile(load.post_seconds, 99) * 1000:.0f} ms;"
        f" {load.late_starts} late starts; {len(load.errors)} errors"
    )
    for error in load.errors[:5]:
        print(f"    {error}")
    print(
        f"lag as a live dashboard sees it (POST returned -> the group's event stream tells of a"
        f" change, then GET with Cache-Control: no-cache shows the batch), {len(lags)} batches:"
        f" p50 {seconds_text(percentile(lags, 50))} s, p95 {seconds_text(percentile(lags, 95))} s,"
        f" p99 {seconds_text(lag_p99)} s, max {seconds_text(max(lags, default=math.nan))} s;"
        f" {probe.missed} missed (> {args.lag_timeout:.0f} s; the {len(probe.lags)} seen: max"
        f" {max(probe.lags, default=math.nan):.2f} s); {len(events.changed)} streams told of"
        f" {events.events} changes, {probe.polls} GETs, {len(probe.poll_errors)} errors,"
        f" {len(events.errors)} stream errors"
    )
    for error in events.errors[:5]:
        print(f"    {error}")
    for error in probe.poll_errors[:5]:
        print(f"    {error}")
    print(
        f"lag to materialized_stats (POST returned -> the table shows the batch):"
        f" p50 {seconds_text(percentile(table_lags, 50))} s,"
        f" p95 {seconds_text(percentile(table_lags, 95))} s,"
        f" p99 {seconds_text(percentile(table_lags, 99))} s; {table_probe.missed} missed;"
        f" {len(table_probe.poll_errors)} errors"
    )
    for error in table_probe.poll_errors[:5]:
        print(f"    {error}")
    for name, lag_probe in (("as a live dashboard sees it", probe), ("to the table", table_probe)):
        inside, outside = lag_probe.split(wrk_window)
        print(
            f"  lag {name}: batches posted while wrk ran ({len(inside)}):"
            f" p50 {seconds_text(percentile(inside, 50))} s,"
            f" p99 {seconds_text(percentile(inside, 99))} s;"
            f" the others ({len(outside)}): p50 {seconds_text(percentile(outside, 50))} s,"
            f" p99 {seconds_text(percentile(outside, 99))} s"
        )
    print(
        f"worker: {ticks.incremental} incremental ticks folding {ticks.attempts_folded:,} attempts;"
        f" tick p50 {percentile(ticks.seconds, 50):.3f} s, p95 {percentile(ticks.seconds, 95):.3f}"
        f" s, max {max(ticks.seconds, default=math.nan):.3f} s; phase medians "
        + ", ".join(f"{k} {v:.3f}" for k, v in ticks.phase_medians.items())
    )
    if ticks.others:
        print(f"    other ticks in the window: {'; '.join(ticks.others[:10])}")
    print_api_table(args, baseline, during)
    print(
        f"lag p99 {seconds_text(lag_p99)} s <= {LAG_P99_TARGET_S:.0f} s:"
        f" {'PASS' if lag_ok else 'FAIL'}; API p99 during / baseline = {ratio:.2f}"
        f" <= {API_P99_RATIO_TARGET}: {'PASS' if api_ok else 'FAIL'}"
    )
    print(
        json.dumps(
            {
                "ingest_attempts_per_second": rate,
                "lag_seconds": lag_quantiles(lags),
                "lag_missed": probe.missed,
                "table_lag_seconds": lag_quantiles(table_lags),
                "baseline": asdict(baseline),
                "during": asdict(during),
                "ticks": asdict(ticks),
            }
        )
    )
    return 0 if lag_ok and api_ok else 1


if __name__ == "__main__":
    sys.exit(main())
