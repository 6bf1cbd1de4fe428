"""The Teacher Dashboard in Chromium: time from navigation to the KPI cards, and bytes on the wire.

Targets (issue): on the demo school, interactive <= 1 s after navigation (navigation start ->
the KPI cards rendered, the page's `kpi-rendered` performance mark) and a first load that
transfers <= 300 KB.

The demo school is `reporting demo`'s (300 students, 12 groups, 24 topics, 4 levels, 36,000
attempts, seed 2026), its statistics computed by `stats.aggregate.tick` when that exists, else
by the SQL below (the same definitions, CONTRACT §2, for the rows the dashboard reads). The API
runs as a real process (`reporting serve`); Debian's Chromium is driven by Playwright. A cold
run is a fresh browser context (empty cache) signed in as the demo's first teacher; a warm run
reloads the same context (the versioned static files come from the cache).

    .venv/bin/python bench/bench_dashboard.py [--runs 10] [--server-url URL]
"""

import argparse
import importlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from playwright.sync_api import Browser, BrowserContext, Request, sync_playwright
from psycopg import sql

from reporting.auth.tokens import issue_token
from reporting.db import schema
from reporting.ingest.seed import SeedSpec, seed
from reporting.settings import AuthSettings

DEMO_SCHOOL = SeedSpec(students=300, groups=12, topics=24, levels=4, attempts=36_000, seed=2026)
INTERACTIVE_TARGET_MS = 1000.0
TRANSFER_TARGET_BYTES = 300_000
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Stand-in for reporting-worker's tick until stats/aggregate.py exists: one base aggregate per
# (user, group, topic), every scope rolled up from it.
DERIVE_SQL = """
CREATE TEMP TABLE base ON COMMIT DROP AS
SELECT a.user_key, a.group_key, a.topic_key, t.level_key,
       count(*) AS n, count(*) FILTER (WHERE a.is_correct) AS c, sum(a.score) AS s,
       count(*) FILTER (WHERE a.hints_used > 0) AS hinted, sum(a.hints_used) AS hints,
       sum(a.time_spent_ms) AS ms, max(a.attempted_at) AS last
FROM attempts a JOIN topics t ON t.key = a.topic_key
GROUP BY 1, 2, 3, 4;

CREATE FUNCTION pg_temp.kpis(n numeric, users bigint, acc float8, score float8, hinted numeric,
                             hints numeric, ms numeric) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('total_attempts', n, 'total_users', users, 'avg_accuracy', acc,
        'avg_score', score, 'hint_usage_rate', hinted / n, 'avg_hints', hints / n,
        'avg_time_seconds', ms / 1000.0 / n)
$$;
CREATE FUNCTION pg_temp.progress(n numeric, c numeric, s float8, hints numeric, ms numeric)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('attempts', n, 'correct', c, 'accuracy', c / n, 'score', s,
        'hints_used', hints, 'avg_time_seconds', ms / 1000.0 / n)
$$;

INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group', gid, gid,
       pg_temp.kpis(sum(n), count(*), avg(c / n), avg(s), sum(hinted), sum(hints), sum(ms)), now()
FROM (SELECT g.id AS gid, b.user_key, sum(n) AS n, sum(c)::float8 AS c, sum(s) AS s,
             sum(hinted) AS hinted, sum(hints) AS hints, sum(ms) AS ms
      FROM base b JOIN groups g ON g.key = b.group_key GROUP BY 1, 2) u
GROUP BY gid;

INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group_level', gid || ':' || lid, gid,
       pg_temp.kpis(sum(n), count(*), avg(c / n), avg(s), sum(hinted), sum(hints), sum(ms)), now()
FROM (SELECT g.id AS gid, l.id AS lid, b.user_key, sum(n) AS n, sum(c)::float8 AS c,
             sum(s) AS s, sum(hinted) AS hinted, sum(hints) AS hints, sum(ms) AS ms
      FROM base b JOIN groups g ON g.key = b.group_key JOIN levels l ON l.key = b.level_key
      GROUP BY 1, 2, 3) u
GROUP BY gid, lid;

INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group_topic', gid || ':' || tid, gid,
       pg_temp.kpis(sum(n), count(*), avg(c / n), avg(s), sum(hinted), sum(hints), sum(ms)), now()
FROM (SELECT g.id AS gid, t.id AS tid, b.user_key, n, c::float8 AS c, s, hinted, hints, ms
      FROM base b JOIN groups g ON g.key = b.group_key JOIN topics t ON t.key = b.topic_key) u
GROUP BY gid, tid;

INSERT INTO leaderboards (scope, scope_id, rankings, computed_at, expires_at)
SELECT 'group', gid,
       jsonb_agg(jsonb_build_object('rank', rk, 'user_id', uid, 'display_name', name,
                 'score', s, 'accuracy', c / n, 'attempts', n) ORDER BY rn),
       now(), now() + interval '24 hours'
FROM (SELECT *, rank() OVER (PARTITION BY gid ORDER BY s DESC) AS rk,
             row_number() OVER (PARTITION BY gid ORDER BY s DESC, c / n DESC, uid) AS rn
      FROM (SELECT g.id AS gid, u.id AS uid, u.display_name AS name, sum(n) AS n,
                   sum(c)::float8 AS c, sum(s) AS s
            FROM base b JOIN groups g ON g.key = b.group_key JOIN users u ON u.key = b.user_key
            GROUP BY 1, 2, 3) per_user) ranked
WHERE rn <= %(board_size)s
GROUP BY gid;

INSERT INTO progress_summary (user_id, totals, levels, topics, last_activity_at, computed_at)
SELECT u.id, tot.totals, lv.levels, tp.topics, tot.last, now()
FROM users u
JOIN (SELECT user_key, pg_temp.progress(sum(n), sum(c), sum(s), sum(hints), sum(ms)) AS totals,
             max(last) AS last
      FROM base GROUP BY 1) tot ON tot.user_key = u.key
JOIN (SELECT user_key, jsonb_agg(p || jsonb_build_object('level_id', lid) ORDER BY pos) AS levels
      FROM (SELECT b.user_key, l.id AS lid, l.position AS pos,
                   pg_temp.progress(sum(n), sum(c), sum(s), sum(hints), sum(ms)) AS p
            FROM base b JOIN levels l ON l.key = b.level_key GROUP BY 1, 2, 3) x
      GROUP BY 1) lv ON lv.user_key = u.key
JOIN (SELECT user_key, jsonb_agg(p || jsonb_build_object('topic_id', tid, 'level_id', lid)
                                 ORDER BY tid) AS topics
      FROM (SELECT b.user_key, t.id AS tid, l.id AS lid,
                   pg_temp.progress(sum(n), sum(c), sum(s), sum(hints), sum(ms)) AS p
            FROM base b JOIN topics t ON t.key = b.topic_key JOIN levels l ON l.key = t.level_key
            GROUP BY 1, 2, 3) x
      GROUP BY 1) tp ON tp.user_key = u.key;
"""


@dataclass
class Run:
    interactive_ms: float
    transfer_bytes: int
    requests: int
    by_resource: dict[str, int] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def derive(url: str) -> str:
    """Compute the demo school's statistics; returns which way it was done."""
    try:
        aggregate: ModuleType | None = importlib.import_module("reporting.stats.aggregate")
    except ModuleNotFoundError:
        aggregate = None
    with psycopg.connect(url) as conn:
        if aggregate is not None:
            from reporting.settings import load_settings

            aggregate.tick(conn, load_settings(require_jwt=False))
            return "stats.aggregate.tick"
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(DERIVE_SQL, {"board_size": 100})
    return "the SQL stand-in in this script (stats/aggregate.py does not exist yet)"


@contextmanager
def demo_database(server_url: str | None) -> Iterator[str]:
    data_dir: Path | None = None
    if server_url is None:
        from reporting.db import embedded

        data_dir = Path(tempfile.mkdtemp(prefix="reporting-bench-dashboard-"))
        server_url = _with_database(embedded.server_uri(data_dir), "postgres")
    name = f"reporting_bench_dash_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(server_url, name)
        schema.upgrade(url)
        started = time.perf_counter()
        with psycopg.connect(url) as conn:
            seed(conn, DEMO_SCHOOL)
        seeded = time.perf_counter()
        how = derive(url)
        print(
            f"demo school seeded in {seeded - started:.1f} s, statistics in"
            f" {time.perf_counter() - seeded:.1f} s by {how}"
        )
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if data_dir is not None:
            from reporting.db import embedded

            embedded.stop_server(data_dir, force=True)
            shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def serve(database_url: str, secret: str) -> Iterator[str]:
    """`reporting serve` as its own process; yields its base URL once /readyz answers."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REPORTING_JWT_SECRET": secret}
    env.pop("REPORTING_JWT_PUBLIC_KEY", None)
    command = [str(Path(sys.executable).parent / "reporting"), "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"reporting serve exited with {process.returncode}")
            with suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("reporting serve did not become ready in 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def new_context(browser: Browser, token: str) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    # As after signing in: the token waits in this tab's sessionStorage.
    context.add_init_script(f"sessionStorage.setItem('reporting.token', {token!r})")
    return context


def measure(context: BrowserContext, url: str, *, reload: bool) -> Run:
    """One navigation: ms from its start to the KPI cards, and every byte it transferred until
    the whole view (students, exports) was drawn."""
    page = context.pages[0] if reload else context.new_page()
    finished: list[Request] = []

    def on_finished(request: Request) -> None:
        finished.append(request)

    page.on("requestfinished", on_finished)
    if reload:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector("#kpi-cards .kpi >> nth=5")
    interactive = page.evaluate("performance.getEntriesByName('kpi-rendered')[0].startTime")
    page.wait_for_selector("#attention-list > li")
    page.wait_for_selector("#export-list > li")
    page.wait_for_timeout(200)  # let the last responses finish
    page.remove_listener("requestfinished", on_finished)
    by_resource: dict[str, int] = {}
    for request in finished:
        sizes = request.sizes()
        name = urlsplit(request.url).path.rsplit("/", 1)[-1] or request.url
        by_resource[name] = by_resource.get(name, 0) + (
            sizes["responseBodySize"] + sizes["responseHeadersSize"]
        )
    return Run(
        interactive_ms=float(interactive),
        transfer_bytes=sum(by_resource.values()),
        requests=len(finished),
        by_resource=by_resource,
    )


def summary(runs: list[Run]) -> str:
    times = sorted(r.interactive_ms for r in runs)
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return (
        f"median {statistics.median(times):6.0f} ms  p90 {p90:6.0f} ms  max {times[-1]:6.0f} ms"
        f"  | {statistics.median(r.transfer_bytes for r in runs) / 1000:6.1f} kB"
        f" in {runs[0].requests} requests"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="cold and warm runs each")
    parser.add_argument("--server-url", help="PostgreSQL server to build on (default: embedded)")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit("chromium is missing: run scripts/system-deps.sh")

    secret = secrets.token_urlsafe(32)
    auth = AuthSettings(REPORTING_JWT_SECRET=secret)
    with demo_database(args.server_url) as url, serve(url, secret) as base:
        with psycopg.connect(url) as conn:
            groups = [r[0] for r in conn.execute("SELECT id FROM groups ORDER BY key LIMIT 2")]
            students = conn.execute(
                "SELECT count(*) FROM user_groups ug JOIN groups g ON g.key = ug.group_key"
                " WHERE g.id = %s",
                (groups[0],),
            ).fetchone()
        # The demo's first teacher: two groups, the first one opens.
        token = issue_token(auth, role="teacher", sub="demo-teacher-1", group_ids=groups)
        page_url = f"{base}/dashboard#group={groups[0]}"
        cold: list[Run] = []
        warm: list[Run] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            measure(new_context(browser, token), page_url, reload=False)  # one unmeasured warm-up
            for _ in range(args.runs):
                context = new_context(browser, token)
                cold.append(measure(context, page_url, reload=False))
                warm.append(measure(context, page_url, reload=True))
                context.close()
            browser.close()

    print()
    print(
        f"demo school: {DEMO_SCHOOL.students} students, {DEMO_SCHOOL.groups} groups,"
        f" {DEMO_SCHOOL.topics} topics, {DEMO_SCHOOL.attempts:,} attempts;"
        f" group {groups[0]} has {students[0] if students else 0} students"
    )
    print(f"navigation start -> KPI cards rendered, {args.runs} runs each (Chromium, headless)")
    print(f"  first load (empty cache): {summary(cold)}")
    print(f"  reload (warm cache):      {summary(warm)}")
    print("  first load by resource (bytes on the wire, headers included):")
    for name, size in sorted(cold[0].by_resource.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<28}{size:>8,}")
    worst_ms = max(r.interactive_ms for r in cold + warm)
    first_bytes = max(r.transfer_bytes for r in cold)
    ok = worst_ms <= INTERACTIVE_TARGET_MS and first_bytes <= TRANSFER_TARGET_BYTES
    print(
        f"worst time to KPIs {worst_ms:.0f} ms (target <= {INTERACTIVE_TARGET_MS:.0f} ms),"
        f" largest first load {first_bytes / 1000:.1f} kB"
        f" (target <= {TRANSFER_TARGET_BYTES / 1000:.0f} kB): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
