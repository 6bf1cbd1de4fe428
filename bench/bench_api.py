"""GET /stats/groups/{id} against the trivial /healthz of the same server, under wrk.

Target (issue): the stats route keeps >= 50% of /healthz's throughput and a p99 <= 25 ms under
`wrk -t2 -c64 -d10s` on the 10M-attempt school (2,000 groups, up to 500 topics each).

The API runs as a real process (`reporting serve`, one uvicorn worker: two doubled /healthz but
each keeps its own cache, so every page is filled twice and the stats route lost ground). The
database is one of:
- `--seeded DBNAME`: bench_seed.py's 10M-attempt school kept as DBNAME, ticked once by the real
  analytics worker when it never was (DATABASE_URL's server, else the embedded one);
- `--database-url URL`: any seeded and ticked database, served as it is;
- by default, a synthetic school built here in ~20 s: the derived rows of that school inserted
  directly (2,000 groups x 500 topics x 10 levels, 25 learners a group, group leaderboards,
  full-precision metrics: pages a little larger and far less compressible than the real ones).
The route reads only derived rows, so their sizes are what matter.

Every group is requested once first (the cache is warm, as it is between two hourly ticks);
then wrk rotates over every group, each request with the token of that group's teacher, once
with a browser's `Accept-Encoding` (pages are served precompressed) and once without.

    .venv/bin/python bench/bench_api.py [--seeded DBNAME | --database-url URL] [--duration 10]
"""

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from reporting.auth.tokens import issue_token
from reporting.db import schema
from reporting.settings import AuthSettings

GROUPS, LEVELS, TOPICS, LEARNERS_PER_GROUP = 2000, 10, 500, 25
RATIO_TARGET, P99_TARGET_MS = 0.5, 25.0
# What a browser (the dashboard) sends; httpx and curl --compressed send gzip too.
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br"

# The derived rows of the 10M school, as reporting-worker writes them (CONTRACT §2). Metrics are
# full-precision doubles: the largest a page can get.
SCHOOL_SQL = """
INSERT INTO groups (id, name)
SELECT 'g' || lpad(i::text, 4, '0'), 'Группа ' || i FROM generate_series(1, %(groups)s) i;
INSERT INTO levels (id, name, position)
SELECT 'l' || lpad(i::text, 2, '0'), 'Уровень ' || i, i FROM generate_series(1, %(levels)s) i;
INSERT INTO topics (id, name, level_key)
SELECT 't' || lpad(i::text, 3, '0'), 'Тема № ' || i || ' — упражнения', l.key
FROM generate_series(1, %(topics)s) i
JOIN levels l ON l.position = 1 + (i - 1) %% %(levels)s;
INSERT INTO users (id, display_name)
SELECT 'u' || lpad(i::text, 6, '0'), 'Ученик ' || i
FROM generate_series(1, %(groups)s * %(learners)s) i;
INSERT INTO user_groups (user_key, group_key)
SELECT u.key, g.key FROM users u JOIN groups g ON g.key = 1 + (u.key - 1) / %(learners)s;

CREATE FUNCTION pg_temp.metrics() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT jsonb_build_object(
        'total_attempts', (random() * 5000)::int, 'total_users', (random() * 25)::int,
        'avg_accuracy', random(), 'avg_score', random() * 100, 'hint_usage_rate', random(),
        'avg_hints', random() * 3, 'avg_time_seconds', random() * 120)
$$;
INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group', g.id, g.id, pg_temp.metrics(), now() FROM groups g;
INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'level', l.id, NULL, pg_temp.metrics(), now() FROM levels l;
INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'topic', t.id, NULL, pg_temp.metrics(), now() FROM topics t;
INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group_level', g.id || ':' || l.id, g.id, pg_temp.metrics(), now() FROM groups g, levels l;
INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
SELECT 'group_topic', g.id || ':' || t.id, g.id, pg_temp.metrics(), now() FROM groups g, topics t;

INSERT INTO leaderboards (scope, scope_id, rankings, computed_at, expires_at)
SELECT 'group', g.id, jsonb_agg(jsonb_build_object(
           'rank', r.rank, 'user_id', r.id, 'display_name', r.display_name, 'score', r.score,
           'accuracy', r.accuracy, 'attempts', 200) ORDER BY r.rank),
       now(), now() + interval '24 hours'
FROM groups g
JOIN LATERAL (
    SELECT u.id, u.display_name, 1000 - u.key %% 997 AS score, 0.5 + (u.key %% 50) / 100.0 AS accuracy,
           rank() OVER (ORDER BY 1000 - u.key %% 997 DESC) AS rank
    FROM user_groups ug JOIN users u ON u.key = ug.user_key WHERE ug.group_key = g.key
) r ON true
GROUP BY g.id;
ANALYZE;
"""


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str


def _with_database(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bench_database(args: argparse.Namespace) -> Iterator[str]:
    """The database to serve: the given one, or a synthetic school built (and dropped) here."""
    if args.database_url:
        yield args.database_url
        return
    if args.seeded:
        yield seeded_and_ticked(args.seeded)
        return
    data_dir: Path | None = None
    server_url = args.server_url
    if server_url is None:
        from reporting.db import embedded

        data_dir = Path(tempfile.mkdtemp(prefix="reporting-bench-api-"))
        server_url = _with_database(embedded.server_uri(data_dir), "postgres")
    name = f"reporting_bench_api_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _with_database(server_url, name)
        started = time.perf_counter()
        schema.upgrade(url)
        with psycopg.connect(url) as conn, psycopg.ClientCursor(conn) as cur:
            # client-side binding: several statements in one go
            cur.execute(
                SCHOOL_SQL,
                {
                    "groups": GROUPS,
                    "levels": LEVELS,
                    "topics": TOPICS,
                    "learners": LEARNERS_PER_GROUP,
                },
            )
        print(f"built the synthetic school's derived rows in {time.perf_counter() - started:.1f} s")
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


def seeded_and_ticked(name: str) -> str:
    """bench_seed.py's 10M-attempt school (kept as `name`), with one analytics tick run on it."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_seed import seeded_database

    from reporting.settings import load_settings
    from reporting.stats import aggregate

    url = seeded_database(name)
    with psycopg.connect(url) as conn:
        ticked = conn.execute("SELECT 1 FROM worker_ticks WHERE status = 'success'").fetchone()
    if ticked is None:
        started = time.perf_counter()
        with psycopg.connect(url) as conn:
            aggregate.tick(conn, load_settings(require_jwt=False))
        print(f"ran the first analytics tick in {time.perf_counter() - started:.1f} s")
    return url


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


def rotation_script(
    group_ids: list[str],
    tokens: list[str],
    directory: Path,
    accept_encoding: str | None,
    pace_ms: int = 0,
) -> Path:
    """A wrk Lua script cycling over the groups, each with its own teacher's token.

    `pace_ms` > 0: each connection waits that long after an answer before its next request
    (wrk's delay()), so the offered load is about connections / (pace + latency) per second
    instead of all the server can take.
    """
    path = directory / f"rotate_groups_{'gzip' if accept_encoding else 'plain'}_{pace_ms}.lua"
    extra = f', ["Accept-Encoding"] = "{accept_encoding}"' if accept_encoding else ""
    pairs = ",\n".join(
        f'  {{"/stats/groups/{gid}", "Bearer {token}"}}'
        for gid, token in zip(group_ids, tokens, strict=True)
    )
    path.write_text(
        f"local targets = {{\n{pairs}\n}}\n"
        "local threads = 0\n"
        "function setup(thread)\n"
        "  threads = threads + 1\n"
        '  thread:set("offset", threads * 997)\n'
        "end\n"
        "local i = 0\n"
        "function init(args)\n"
        "  i = (offset or 0) % #targets\n"
        "end\n"
        "function request()\n"
        "  i = i % #targets + 1\n"
        "  local t = targets[i]\n"
        f'  return wrk.format("GET", t[1], {{["Authorization"] = t[2]{extra}}})\n'
        "end\n" + (f"function delay()\n  return {pace_ms}\nend\n" if pace_ms > 0 else "")
    )
    return path


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, duration: int, script: Path | None = None) -> WrkResult:
    command = ["wrk", "-t2", "-c64", f"-d{duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise SystemExit(f"could not read wrk's output:\n{output}")
    errors = " ".join(
        line.strip() for line in output.splitlines() if "Non-2xx" in line or "Socket errors" in line
    )
    return WrkResult(
        float(rps.group(1)),
        _ms(*p50.groups()),
        _ms(*p99.groups()),
        int(total.group(1)),
        errors or "none",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a seeded and ticked database to serve as is")
    parser.add_argument(
        "--seeded",
        metavar="DBNAME",
        help="serve bench_seed.py's 10M school kept as DBNAME (seeded and ticked when needed;"
        " on DATABASE_URL's server, else the embedded one under REPORTING_DATA_DIR)",
    )
    parser.add_argument(
        "--server-url", help="build the synthetic school on this server (default: embedded)"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run scripts/system-deps.sh")

    secret = secrets.token_urlsafe(32)
    auth = AuthSettings(REPORTING_JWT_SECRET=secret)
    with bench_database(args) as database_url, serve(database_url, secret) as base:
        with psycopg.connect(database_url) as conn:
            group_ids = [row[0] for row in conn.execute("SELECT id FROM groups ORDER BY id")]
            topics_per_group = conn.execute(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM materialized_stats"
                " WHERE type = 'group_topic' GROUP BY group_id) s"
            ).fetchone()
        tokens = [
            issue_token(auth, role="teacher", sub=f"bench-{gid}", group_ids=[gid], ttl_seconds=3600)
            for gid in group_ids
        ]

        # Cold and warm single requests, and a pass over every group (fills the cache).
        with httpx.Client(base_url=base, timeout=30) as client:
            headers = {"Authorization": f"Bearer {tokens[0]}"}
            started = time.perf_counter()
            first = client.get(f"/stats/groups/{group_ids[0]}", headers=headers)
            cold_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            client.get(f"/stats/groups/{group_ids[0]}", headers=headers)
            warm_ms = (time.perf_counter() - started) * 1000
            if first.status_code != 200 or set(first.json()) != {
                "group_id",
                "name",
                "stats",
                "leaderboard",
                "levels",
                "topics",
            }:
                raise SystemExit(f"unexpected answer: {first.status_code} {first.text[:300]}")
            sizes, gzip_sizes = [], []
            started = time.perf_counter()
            for gid, token in zip(group_ids, tokens, strict=True):
                response = client.get(
                    f"/stats/groups/{gid}", headers={"Authorization": f"Bearer {token}"}
                )
                response.raise_for_status()
                sizes.append(len(response.content))
                gzip_sizes.append(int(response.headers["content-length"]))
            fill_s = time.perf_counter() - started

        # The baseline runs before and after the stats runs (the mean is the reference): on a
        # shared machine the load drifts within a minute.
        with tempfile.TemporaryDirectory() as scratch:
            runs = {"/healthz (before)": run_wrk(f"{base}/healthz", args.duration)}
            for label, encoding in (("gzip", BROWSER_ACCEPT_ENCODING), ("identity", None)):
                script = rotation_script(group_ids, tokens, Path(scratch), encoding)
                runs[f"/stats/groups/{{id}} {label}"] = run_wrk(base, args.duration, script)
            runs["/healthz (after)"] = run_wrk(f"{base}/healthz", args.duration)

    baseline_rps = (
        runs["/healthz (before)"].requests_per_second + runs["/healthz (after)"].requests_per_second
    ) / 2
    print()
    print(
        f"school: {len(group_ids)} groups, up to {topics_per_group[0] if topics_per_group else 0}"
        f" topics a group; page {sum(sizes) / len(sizes) / 1024:.0f} KiB"
        f" ({sum(gzip_sizes) / len(gzip_sizes) / 1024:.0f} KiB gzipped)"
    )
    print(
        f"one page: cold {cold_ms:.1f} ms, cached {warm_ms:.1f} ms;"
        f" first pass over all groups {fill_s:.1f} s"
    )
    print(f"wrk -t2 -c64 -d{args.duration}s --latency, 1 uvicorn worker (asyncio, httptools)")
    print(f"{'route':<32}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}  verdict")
    verdicts = {}
    for name, result in runs.items():
        ratio = result.requests_per_second / baseline_rps
        ok = ratio >= RATIO_TARGET and result.p99_ms <= P99_TARGET_MS and result.errors == "none"
        verdicts[name] = "baseline" if name.startswith("/healthz") else ("PASS" if ok else "FAIL")
        print(
            f"{name:<32}{result.requests_per_second:>9,.0f}{result.p50_ms:>9.2f}"
            f"{result.p99_ms:>9.2f}{ratio:>7.2f}  {verdicts[name]}"
            + ("" if result.errors == "none" else f" ({result.errors})")
        )
    print(
        f"targets: ratio to the mean /healthz >= {RATIO_TARGET}, p99 <= {P99_TARGET_MS:.0f} ms;"
        " the exit status follows the gzip run (what the dashboard's browser sends)"
    )
    print(json.dumps({name: asdict(result) for name, result in runs.items()}))
    return 0 if verdicts["/stats/groups/{id} gzip"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
