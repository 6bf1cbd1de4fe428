"""Seed benchmark: load the synthetic school into a fresh database and print how fast it went.

    python bench/bench_seed.py                      # the full school: 10M attempts (target ≥ 200k/s)
    python bench/bench_seed.py --attempts 1000000   # a smaller run
    python bench/bench_seed.py --keep bench10m      # keep the seeded database for other benchmarks

The server is DATABASE_URL's when set, else an embedded PostgreSQL in a temporary data dir
(with --keep: under REPORTING_DATA_DIR, default ./.reporting, so that it outlives this run).
It prints the wall time, attempts/s and the split (directory, generation, index build, analyze,
commit), then times `POST /ingest/attempts` with full batches of 10,000 against the seeded table.

--keep NAME keeps the database under that name (then VACUUMs it, and skips the API timing, which
would write to it) and reuses it when it already holds the same school, so several benchmarks may
ask for it; an advisory lock makes concurrent callers wait for the first.
Other benchmarks can also import it: `from bench_seed import seeded_database` then
`url = seeded_database("bench10m")`.
"""

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from reporting.app import create_app
from reporting.auth.tokens import issue_token
from reporting.db import embedded, schema
from reporting.db.engine import connect
from reporting.ingest.schemas import MAX_BATCH
from reporting.ingest.seed import SeedResult, SeedSpec, seed
from reporting.settings import AuthSettings, DatabaseSettings, load_settings

FULL = SeedSpec(students=100_000, groups=2_000, topics=500, levels=20, attempts=10_000_000, seed=1)
TARGET_PER_SECOND = 200_000
INGEST_PREFIX = "bench-ingest-"


@dataclass(frozen=True)
class Server:
    """Where databases are created: a maintenance URL, and the embedded data dir if ours."""

    maintenance_url: str
    description: str
    temp_dir: Path | None = None


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def open_server(*, keep: bool) -> Server:
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        return Server(with_database(url, "postgres"), f"DATABASE_URL ({urlsplit(url).netloc})")
    if keep:
        data_dir = Path(os.environ.get("REPORTING_DATA_DIR", "./.reporting")).resolve()
        uri = embedded.server_uri(data_dir)
        return Server(with_database(uri, "postgres"), f"embedded, {data_dir}")
    temp_dir = Path(tempfile.mkdtemp(prefix="bench-seed-pg-"))
    uri = embedded.server_uri(temp_dir)
    return Server(with_database(uri, "postgres"), f"embedded, {temp_dir}", temp_dir)


def close_server(server: Server) -> None:
    if server.temp_dir is not None:
        embedded.stop_server(server.temp_dir, force=True)
        shutil.rmtree(server.temp_dir, ignore_errors=True)


def holds_school(url: str, spec: SeedSpec) -> bool:
    """True when the database has exactly the spec's directory and attempts (a finished seed)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM users),"
            " (SELECT count(*) FROM levels), (SELECT count(*) FROM topics),"
            " (SELECT count(*) FROM attempts)"
        ).fetchone()
    return row == (spec.groups, spec.students, spec.levels, spec.topics, spec.attempts)


def create_database(server: Server, name: str) -> str:
    with psycopg.connect(server.maintenance_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server.maintenance_url, name)
    schema.upgrade(url)
    return url


def drop_database(server: Server, name: str) -> None:
    with psycopg.connect(server.maintenance_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_exists(server: Server, name: str) -> bool:
    with psycopg.connect(server.maintenance_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


@dataclass(frozen=True)
class SeedRun:
    result: SeedResult
    commit_seconds: float
    wall_seconds: float


def run_seed(url: str, spec: SeedSpec) -> SeedRun:
    started = time.perf_counter()
    with connect(url) as conn:
        result = seed(conn, spec)
        committing = time.perf_counter()
        conn.commit()
        committed = time.perf_counter()
    return SeedRun(result, committed - committing, committed - started)


def seeded_database(name: str, spec: SeedSpec = FULL, *, replace_existing: bool = False) -> str:
    """The URL of database `name` holding the seeded school: reused if complete, else seeded.

    Holds an advisory lock on the server meanwhile, so concurrent callers wait for the first one.
    With the embedded server, it keeps running while this process lives.
    """
    server = open_server(keep=True)
    with psycopg.connect(server.maintenance_url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"bench_seed:{name}",))
        url = with_database(server.maintenance_url, name)
        if database_exists(server, name):
            if holds_school(url, spec):
                print(f"database {name} already holds this school: reusing it")
                return url
            if not replace_existing:
                raise SystemExit(
                    f"error: database {name} exists but does not hold this school;"
                    " pass --replace to drop and seed it again"
                )
            drop_database(server, name)
        create_database(server, name)
        report(run_seed(url, spec), spec, server)
        vacuum(url)
    return url


def vacuum(url: str) -> None:
    """Set hint bits and the visibility map once, so later readers do not pay for it."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) attempts")
    print(f"  vacuum (after, not counted) {time.perf_counter() - started:6.1f} s")


def report(run: SeedRun, spec: SeedSpec, server: Server) -> None:
    r = run.result
    rate = r.attempts / run.wall_seconds if run.wall_seconds > 0 else 0.0
    gen_rate = r.attempts / r.generate_seconds if r.generate_seconds > 0 else 0.0
    print(
        f"seed: {r.attempts:,} attempts, {r.students:,} students, {r.groups:,} groups,"
        f" {r.levels} levels, {r.topics} topics (seed {spec.seed}); server: {server.description}"
    )
    print(f"  directory       {r.directory_seconds:6.1f} s")
    print(f"  generation      {r.generate_seconds:6.1f} s  ({gen_rate:,.0f} attempts/s)")
    print(f"  index build     {r.index_seconds:6.1f} s")
    print(f"  analyze         {r.analyze_seconds:6.1f} s")
    print(f"  commit          {run.commit_seconds:6.1f} s")
    verdict = "meets" if rate >= TARGET_PER_SECOND else "MISSES"
    print(
        f"  wall time       {run.wall_seconds:6.1f} s  -> {rate:,.0f} attempts/s"
        f" ({verdict} the target of {TARGET_PER_SECOND:,}/s)"
    )


async def time_ingest(url: str, batches: int) -> list[float]:
    """Seconds per `POST /ingest/attempts` of MAX_BATCH new attempts into the seeded table
    (they are deleted afterwards)."""
    secret = secrets.token_urlsafe(32)
    auth = AuthSettings(REPORTING_JWT_SECRET=secret)
    settings = load_settings(auth=auth, database=DatabaseSettings(DATABASE_URL=url))
    token = issue_token(auth, role="service", sub="bench", group_ids=[])
    with psycopg.connect(url) as conn:
        members = conn.execute(
            "SELECT u.id, g.id FROM user_groups ug JOIN users u ON u.key = ug.user_key"
            " JOIN groups g ON g.key = ug.group_key ORDER BY ug.user_key LIMIT 5000"
        ).fetchall()
        topics = [r[0] for r in conn.execute("SELECT id FROM topics ORDER BY key")]
    app = create_app(settings, url=url)
    seconds: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for b in range(batches):
                body = {
                    "attempts": [
                        {
                            "event_id": f"{INGEST_PREFIX}{b}-{j}",
                            "user_id": members[j % len(members)][0],
                            "group_id": members[j % len(members)][1],
                            "topic_id": topics[j % len(topics)],
                            "task_id": f"task-{j % 30}",
                            "is_correct": j % 3 != 0,
                            "score": float(j % 10),
                            "hints_used": j % 4,
                            "time_spent_ms": 20_000 + j,
                            "attempted_at": "2026-11-01T10:00:00Z",
                        }
                        for j in range(MAX_BATCH)
                    ]
                }
                started = time.perf_counter()
                response = await client.post(
                    "/ingest/attempts", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                seconds.append(time.perf_counter() - started)
                assert response.json() == {"inserted": MAX_BATCH, "duplicates": 0}, response.text
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM attempts WHERE event_id LIKE %s", (INGEST_PREFIX + "%",))
    return seconds


def report_ingest(seconds: list[float]) -> None:
    if not seconds:
        return
    median = statistics.median(seconds)
    print(
        f"ingest: {len(seconds)} x POST /ingest/attempts of {MAX_BATCH:,} into the seeded table"
        f" (ASGI in-process, JSON encoding included): median {median:.2f} s,"
        f" max {max(seconds):.2f} s ({MAX_BATCH / median:,.0f} attempts/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=FULL.attempts)
    parser.add_argument("--students", type=int, default=FULL.students)
    parser.add_argument("--groups", type=int, default=FULL.groups)
    parser.add_argument("--levels", type=int, default=FULL.levels)
    parser.add_argument("--topics", type=int, default=FULL.topics)
    parser.add_argument("--seed", type=int, default=FULL.seed)
    parser.add_argument("--keep", metavar="DBNAME", help="keep (or reuse) the seeded database")
    parser.add_argument("--replace", action="store_true", help="with --keep: reseed a mismatch")
    parser.add_argument("--ingest-batches", type=int, default=5, help="0 skips the API timing")
    args = parser.parse_args()
    spec = replace(
        FULL,
        attempts=args.attempts,
        students=args.students,
        groups=args.groups,
        levels=args.levels,
        topics=args.topics,
        seed=args.seed,
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores, shared)")

    if args.keep:
        # No API timing here: it would add rows to a database other benchmarks may be reading.
        print(f"kept: {seeded_database(args.keep, spec, replace_existing=args.replace)}")
    else:
        server = open_server(keep=False)
        name = f"bench_seed_{secrets.token_hex(4)}"
        try:
            url = create_database(server, name)
            report(run_seed(url, spec), spec, server)
            report_ingest(asyncio.run(time_ingest(url, args.ingest_batches)))
        finally:
            drop_database(server, name)
            close_server(server)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
