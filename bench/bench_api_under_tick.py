"""GET /stats/groups/{id} under wrk, alone and while `reporting-worker` runs a full tick.

Target (issue 5): under wrk load on the API during a worker tick, the p99 of
GET /stats/groups/{id} stays <= 50 ms (`wrk -t2 -c64`, the 10M-attempt school).

The school is bench_seed.py's, kept as a database (default `bench10m`, shared with the other
benchmarks: seeded on first use, ticked once when it never was, as bench_api.py --seeded does;
DATABASE_URL's server, else the embedded one). The API runs as a real process (`reporting serve`,
as in bench_api.py); wrk rotates over every group, each request with the token of that group's
teacher and a browser's `Accept-Encoding`. Each run:

1. a pass over every group (the cache is warm, as between two hourly ticks; a tick's
   notification empties it, so every run fills it again);
2. baseline: wrk for --duration seconds, no tick running;
3. under a tick: a `reporting-worker --once --full` process is started (`--full`: a whole
   recomputation, the heaviest kind of tick, whatever kind the worker would pick), and wrk runs
   in the windows below (`--phase`: per_user, swap for the last two, or all three in one tick):
   - per_user: --settle seconds after the tick is recorded as running (the per-user phase, the
     heaviest on the database), for as long as the tick's phases before its swap are expected to
     last still (from the previous full tick), at least --duration, at most --max-duration s;
   - swap: --duration seconds from the start of the tick's swap (the live tables rewritten in one
     transaction; readers see the previous rows until it commits);
   - after the swap: --duration seconds right after the worker ended, when the tick's
     notification has emptied the API's cache (a full tick changes every group) and every page
     is filled again under load.

Each wrk run is printed with where it fell in the tick (seconds after its start), beside the
tick's phases, its swap and its notification, and the load average before and after: the machine
has 2 cores shared by the API, the worker, PostgreSQL and wrk itself.

With `--kind incremental`, the tick is the one the worker runs hourly once its running sums
exist: `--new` (100,000) attempts of an hour of lessons (as bench_incremental.py makes them) are
queued, `reporting-worker --once` folds them in, and wrk runs from the worker's start for
--duration seconds and again right after it (the touched groups' pages invalidated). The added
attempts are deleted after the last run and the sums marked stale (the next tick is a full one).

    .venv/bin/python bench/bench_api_under_tick.py [--runs 1] [--duration 10] [--phase per_user]
    .venv/bin/python bench/bench_api_under_tick.py --kind incremental
"""

import argparse
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import (
    BROWSER_ACCEPT_ENCODING,
    WrkResult,
    rotation_script,
    run_wrk,
    seeded_and_ticked,
    serve,
)
from bench_incremental import clean_up, insert_new
from bench_tick import machine

from reporting.auth.tokens import issue_token
from reporting.settings import AuthSettings, WorkerSettings
from reporting.stats import state

P99_TARGET_MS = 50.0
WORKER = Path(sys.executable).parent / "reporting-worker"
TICK_START_TIMEOUT_S = 60.0
TICK_END_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Segment:
    """One wrk run during the tick; from_s/to_s are seconds after the tick's start."""

    label: str
    result: WrkResult
    from_s: float
    to_s: float


@dataclass(frozen=True)
class Tick:
    """The worker's tick as recorded in worker_ticks."""

    tick_id: int
    seconds: float
    durations: dict[str, float]
    swap_from_s: float


@dataclass(frozen=True)
class Run:
    baseline: WrkResult
    segments: list[Segment]
    tick: Tick


def verdict(result: WrkResult) -> str:
    return "PASS" if result.p99_ms <= P99_TARGET_MS and result.errors == "none" else "FAIL"


def warm(base: str, group_ids: list[str], tokens: list[str]) -> float:
    """One request per group (fills the API's cache); returns the seconds it took."""
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=30) as client:
        for gid, token in zip(group_ids, tokens, strict=True):
            client.get(
                f"/stats/groups/{gid}",
                headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
            ).raise_for_status()
    return time.perf_counter() - started


def last_tick(url: str) -> tuple[int, float, float]:
    """The newest worker_ticks id (0 if none); the seconds of the last successful full tick and
    of its swap (0 if none)."""
    with psycopg.connect(url) as conn:
        newest = conn.execute("SELECT coalesce(max(id), 0) FROM worker_ticks").fetchone()
        success = conn.execute(
            "SELECT extract(epoch FROM finished_at - started_at),"
            " coalesce((details->'durations'->>'swap')::float8, 0) FROM worker_ticks"
            " WHERE status = 'success' AND details->>'mode' = 'full' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if success is None:
        return int(newest[0]) if newest else 0, 0.0, 0.0
    return int(newest[0]) if newest else 0, float(success[0]), float(success[1])


def wait_for_tick(url: str, after_id: int, worker: subprocess.Popen[bytes]) -> tuple[int, datetime]:
    """The id and start of the worker's tick once it is recorded as running."""
    deadline = time.monotonic() + TICK_START_TIMEOUT_S
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT id, status, started_at FROM worker_ticks WHERE id > %s ORDER BY id LIMIT 1",
                (after_id,),
            ).fetchone()
            if row is not None:
                if row[1] == "skipped":
                    raise SystemExit("another analytics worker holds the lock: rerun when it ends")
                if row[1] != "running":
                    raise SystemExit(f"tick {row[0]} is already {row[1]}: nothing to measure")
                return int(row[0]), row[2]
            if worker.poll() is not None:
                raise SystemExit(f"reporting-worker exited with {worker.returncode} before a tick")
            if time.monotonic() > deadline:
                raise SystemExit(f"no tick started within {TICK_START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)


def wait_for_swap(url: str, tick_id: int, worker: subprocess.Popen[bytes]) -> bool:
    """Return once the tick's own session works on the live tables (its swap has begun): True;
    False when the worker ended first."""
    deadline = time.monotonic() + TICK_END_TIMEOUT_S
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            # Only the swap touches materialized_stats itself; the phases before it stage rows.
            row = conn.execute(
                "SELECT 1 FROM pg_stat_activity a JOIN worker_ticks t"
                " ON a.pid = (t.details->>'backend_pid')::int"
                " WHERE t.id = %s AND a.state = 'active'"
                " AND a.query ~ '^\\s*(LOCK TABLE|DELETE FROM|INSERT INTO) materialized_stats'",
                (tick_id,),
            ).fetchone()
            if row is not None:
                return True
            if worker.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise SystemExit(f"no swap seen within {TICK_END_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


def stop(worker: subprocess.Popen[bytes]) -> None:
    """Stop a worker left running by an error: the second SIGTERM cancels its tick (rolled back)."""
    worker.terminate()
    worker.terminate()
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=10)


def under_tick(
    url: str, base: str, script: Path, args: argparse.Namespace
) -> tuple[list[Segment], Tick]:
    previous_id, previous_seconds, previous_swap = last_tick(url)
    env = {**os.environ, "DATABASE_URL": url, "REPORTING_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([str(WORKER), "--once", "--full"], env=env)
    windows: list[tuple[str, WrkResult, datetime, datetime]] = []

    def measure(label: str, duration: int) -> None:
        started = datetime.now(UTC)
        result = run_wrk(base, duration, script)
        windows.append((label, result, started, datetime.now(UTC)))

    try:
        tick_id, tick_started = wait_for_tick(url, previous_id, worker)
        if args.phase in ("per_user", "all"):
            time.sleep(args.settle)
            elapsed = (datetime.now(UTC) - tick_started).total_seconds()
            remaining = previous_seconds - elapsed
            if args.phase == "all":
                remaining -= previous_swap  # leave the swap to its own run
            measure(
                "per-user phase",
                min(args.max_duration, max(args.duration, math.ceil(remaining))),
            )
        if args.phase in ("swap", "all"):
            if wait_for_swap(url, tick_id, worker):
                measure("swap", args.duration)
            else:
                print("  the tick ended before wrk could start on its swap")
        returncode = worker.wait(timeout=TICK_END_TIMEOUT_S)
        if args.phase in ("swap", "all"):
            # The tick has committed and notified: the API's cache is empty now.
            measure("after the swap", args.duration)
    finally:
        if worker.poll() is None:
            stop(worker)
    if returncode != 0:
        raise SystemExit(f"reporting-worker --once --full exited with {returncode}")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status, finished_at, details->'durations' FROM worker_ticks WHERE id = %s",
            (tick_id,),
        ).fetchone()
    if row is None or row[0] != "success":
        raise SystemExit(f"tick {tick_id} did not succeed: {row}")
    durations = {str(k): float(v) for k, v in dict(row[2] or {}).items()}
    finished: datetime = row[1]

    def offset(moment: datetime) -> float:
        return (moment - tick_started).total_seconds()

    segments = [
        Segment(label, result, offset(start), offset(end)) for label, result, start, end in windows
    ]
    swap_from = finished - timedelta(seconds=durations.get("swap", 0.0))
    return segments, Tick(tick_id, offset(finished), durations, offset(swap_from))


def under_incremental_tick(
    url: str, base: str, script: Path, args: argparse.Namespace
) -> tuple[list[Segment], Tick]:
    """--kind incremental: `--new` attempts of an hour of lessons (bench_incremental.py) folded
    in by `reporting-worker --once` (the hourly tick once the running sums exist); wrk runs from
    the worker's start for --duration s (the tick: a few seconds) and again right after it, when
    the notification has invalidated the touched groups' pages."""
    env = {**os.environ, "DATABASE_URL": url, "REPORTING_LOG_LEVEL": "WARNING"}
    with psycopg.connect(url, autocommit=True) as conn:
        # The worker below reads its settings from this environment, as WorkerSettings does.
        if not state.is_valid(conn, WorkerSettings().leaderboard_size):
            print("  running sums not valid: a full tick first (not measured)")
            subprocess.run([str(WORKER), "--once", "--full"], env=env, check=True)
        previous_id = last_tick(url)[0]
        inserted = insert_new(conn, "lessons", args.new, int(time.time()) % 100_000)
    print(f"  {inserted:,} new attempts queued (lessons)")
    windows: list[tuple[str, WrkResult, datetime, datetime]] = []
    started_at = datetime.now(UTC)
    worker = subprocess.Popen([str(WORKER), "--once"], env=env)
    try:
        result = run_wrk(base, args.duration, script)
        windows.append(("incremental tick", result, started_at, datetime.now(UTC)))
        returncode = worker.wait(timeout=TICK_END_TIMEOUT_S)
        after = datetime.now(UTC)
        windows.append(("after it", run_wrk(base, args.duration, script), after, datetime.now(UTC)))
    finally:
        if worker.poll() is None:
            stop(worker)
    if returncode != 0:
        raise SystemExit(f"reporting-worker --once exited with {returncode}")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id, started_at, finished_at, details->'durations' FROM worker_ticks"
            " WHERE id > %s AND status = 'success' AND details->>'mode' = 'incremental'"
            " ORDER BY id LIMIT 1",
            (previous_id,),
        ).fetchone()
    if row is None:
        raise SystemExit("no incremental tick was recorded")
    durations = {str(k): float(v) for k, v in dict(row[3] or {}).items()}

    def offset(moment: datetime) -> float:
        return (moment - started_at).total_seconds()

    segments = [
        Segment(label, result, offset(start), offset(end)) for label, result, start, end in windows
    ]
    return segments, Tick(int(row[0]), offset(row[2]), durations, offset(row[1]))


@contextmanager
def added_attempts_removed(url: str, added: bool) -> Iterator[None]:
    """After every run (the runs share the running sums the previous one left valid)."""
    try:
        yield
    finally:
        if added:
            with psycopg.connect(url, autocommit=True) as conn:
                clean_up(conn)


def line(label: str, result: WrkResult) -> str:
    return (
        f"  {label:<34}{result.requests_per_second:>9,.0f}{result.p50_ms:>9.2f}"
        f"{result.p99_ms:>9.2f}  {verdict(result)}"
        + ("" if result.errors == "none" else f" ({result.errors})")
    )


def median_result(results: list[WrkResult]) -> WrkResult:
    errors = "; ".join(r.errors for r in results if r.errors != "none")
    return WrkResult(
        statistics.median(r.requests_per_second for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.requests for r in results),
        errors or "none",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="bench10m", help="kept database of the school")
    parser.add_argument("--runs", type=int, default=1, help="baseline + tick pairs (median)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk (minimum)")
    parser.add_argument(
        "--max-duration", type=int, default=30, help="longest wrk run during a tick (seconds)"
    )
    parser.add_argument(
        "--phase",
        choices=["per_user", "swap", "all"],
        default="all",
        help="where wrk runs in the tick: --settle s into it; at its swap and after it; or all",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="per_user: seconds into the tick before wrk"
    )
    parser.add_argument(
        "--kind",
        choices=["full", "incremental"],
        default="full",
        help="the tick measured: a full one (--phase applies) or an incremental one (--new)",
    )
    parser.add_argument(
        "--new", type=int, default=100_000, help="incremental: new attempts the tick folds in"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run scripts/system-deps.sh")
    if args.runs < 1 or args.duration < 1 or args.max_duration < args.duration:
        raise SystemExit("need --runs >= 1, --duration >= 1 and --max-duration >= --duration")

    url = seeded_and_ticked(args.database)
    secret = secrets.token_urlsafe(32)
    auth = AuthSettings(REPORTING_JWT_SECRET=secret)
    with psycopg.connect(url) as conn:
        group_ids = [r[0] for r in conn.execute("SELECT id FROM groups ORDER BY id")]
        version = conn.execute("SHOW server_version").fetchone()
    tokens = [
        issue_token(auth, role="teacher", sub=f"bench-{gid}", group_ids=[gid], ttl_seconds=7200)
        for gid in group_ids
    ]
    print(
        f"{len(group_ids)} groups, PostgreSQL {version[0] if version else '?'};"
        f" {args.runs} run(s) of wrk -t2 -c64 --latency, 1 uvicorn worker"
    )
    machine("before")
    runs: list[Run] = []
    with (
        serve(url, secret) as base,
        tempfile.TemporaryDirectory() as scratch,
        added_attempts_removed(url, args.kind == "incremental"),
    ):
        script = rotation_script(group_ids, tokens, Path(scratch), BROWSER_ACCEPT_ENCODING)
        for n in range(1, args.runs + 1):
            fill_s = warm(base, group_ids, tokens)
            baseline = run_wrk(base, args.duration, script)
            if args.kind == "full":
                segments, tick = under_tick(url, base, script, args)
            else:
                segments, tick = under_incremental_tick(url, base, script, args)
            runs.append(Run(baseline, segments, tick))
            phases = ", ".join(f"{k} {v:.1f}" for k, v in tick.durations.items())
            print(f"run {n}: cache filled in {fill_s:.1f} s")
            print(f"  {'':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  verdict")
            print(line(f"baseline ({args.duration} s)", baseline))
            for segment in segments:
                where = f"{segment.from_s:.0f}-{segment.to_s:.0f} s"
                print(line(f"{segment.label} ({where})", segment.result))
            print(
                f"  tick {tick.tick_id}: {tick.seconds:.1f} s ({phases}); its swap from"
                f" {tick.swap_from_s:.1f} s, its notification (which empties the API's cache)"
                f" at {tick.seconds:.1f} s"
            )
    machine("after")
    print(f"median over {len(runs)} run(s):")
    print(line("baseline", median_result([r.baseline for r in runs])))
    loaded = [
        median_result([r.segments[i].result for r in runs]) for i in range(len(runs[0].segments))
    ]
    for segment, result in zip(runs[0].segments, loaded, strict=True):
        print(line(f"during a tick: {segment.label}", result))
    passed = all(verdict(result) == "PASS" for result in loaded)
    print(
        f"target: p99 <= {P99_TARGET_MS:.0f} ms during a tick and no errors:"
        f" {'PASS' if passed else 'FAIL'} (the exit status follows it)"
    )
    print(json.dumps([asdict(r) for r in runs]))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
