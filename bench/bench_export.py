"""Export benchmark: request -> ready through the real API process and a real export worker.

(a) a 50-student group, 20 topics, one year of attempts: the median time from POST to `ready`
    (seen by polling GET /stats/exports/{id}) over 10 requests each for CSV (target <= 1 s) and
    PDF (target <= 2 s);
(b) a 1,000-student group over all 200 topics (200,000 (student, topic) rows): CSV request ->
    ready (target <= 5 s), and the export worker's peak RSS (VmHWM, target <= 250 MB), measured
    on a worker process started fresh for it.

    .venv/bin/python bench/bench_export.py [--runs 10] [--big-runs 3]

Uses DATABASE_URL when set (a scratch database is created on that server and dropped after),
else an embedded PostgreSQL in a temp dir. Files go to the local store in a temp dir.
"""

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

from reporting.auth.tokens import issue_token
from reporting.db import schema
from reporting.settings import AuthSettings

BIN = Path(sys.executable).parent
SMALL, BIG = "bench-small", "bench-big"
TOPICS = 200
SMALL_TOPICS = 20
BIG_STUDENTS = 1000
YEAR = {"from": "2025-09-01", "to": "2026-08-31"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new database on DATABASE_URL's server, or on an embedded server in a temp dir."""
    server_url = os.environ.get("DATABASE_URL")
    data_dir: Path | None = None
    if not server_url:
        from reporting.db import embedded

        data_dir = Path(tempfile.mkdtemp(prefix="bench-export-pg-"))
        server_url = embedded.server_uri(data_dir)
    name = f"bench_export_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if data_dir is not None:
            from reporting.db import embedded

            embedded.stop_server(data_dir, force=True)


def load_school(url: str) -> int:
    """The two groups, 200 topics in 5 levels, and a year of attempts; returns the count."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO groups (id, name) VALUES (%s, '7А бенчмарк'), (%s, 'Поток 1000')",
            (SMALL, BIG),
        )
        conn.execute(
            "INSERT INTO levels (id, name, position)"
            " SELECT 'lvl-' || i, 'Уровень ' || i, i FROM generate_series(1, 5) i"
        )
        conn.execute(
            "INSERT INTO topics (id, name, level_key)"
            " SELECT 'topic-' || lpad(i::text, 3, '0'), 'Тема № ' || i, l.key"
            " FROM generate_series(1, %s) i JOIN levels l ON l.id = 'lvl-' || (1 + i %% 5)",
            (TOPICS,),
        )
        for group_id, students in ((SMALL, 50), (BIG, BIG_STUDENTS)):
            conn.execute(
                "INSERT INTO users (id, display_name)"
                " SELECT %(g)s || '-u' || i, 'Ученик ' || md5(%(g)s || i) FROM generate_series(1, %(n)s) i",
                {"g": group_id, "n": students},
            )
            conn.execute(
                "INSERT INTO user_groups (user_key, group_key) SELECT u.key, g.key"
                " FROM users u, groups g WHERE g.id = %(g)s AND u.id LIKE %(g)s || '-u%%'",
                {"g": group_id},
            )
        # Small group: 50 students x 4 attempts a day for a year on its 20 topics (73,000).
        conn.execute(
            """
            INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct,
                                  score, hints_used, time_spent_ms, attempted_at)
            SELECT 'small-' || u.key || '-' || d || '-' || k, u.key, g.key,
                   (SELECT key FROM topics WHERE id = 'topic-' || lpad((1 + (u.key * 7 + d + k) %% %(topics)s)::text, 3, '0')),
                   'task-' || k, abs(hashint4(u.key * 1000 + d * 4 + k)) %% 10 < 7,
                   abs(hashint4(d * 4 + k + u.key)) %% 3, (hashint4(u.key + d) %% 3 + 3) %% 3,
                   5000 + (hashint4(u.key * 31 + d) %% 40000 + 40000) %% 40000,
                   timestamptz '2025-09-01 08:00:00+00' + make_interval(days => d, mins => k * 90)
            FROM users u, groups g, generate_series(0, 364) d, generate_series(0, 3) k
            WHERE g.id = %(g)s AND u.id LIKE %(g)s || '-u%%'
            """,
            {"g": SMALL, "topics": SMALL_TOPICS},
        )
        # Big group: every student on every topic, twice (400,000 attempts, 200,000 rows).
        conn.execute(
            """
            INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct,
                                  score, hints_used, time_spent_ms, attempted_at)
            SELECT 'big-' || u.key || '-' || t.key || '-' || k, u.key, g.key, t.key, 'task',
                   abs(hashint4(u.key * 7 + t.key + k)) %% 10 < 6, 1.5, k, 20000 + k * 1000,
                   timestamptz '2025-09-01 08:00:00+00'
                       + make_interval(days => (u.key + t.key * 3 + k * 100) %% 365)
            FROM users u, groups g, topics t, generate_series(0, 1) k
            WHERE g.id = %(g)s AND u.id LIKE %(g)s || '-u%%'
            """,
            {"g": BIG},
        )
        conn.commit()
        conn.execute("ANALYZE")
        row = conn.execute("SELECT count(*) FROM attempts").fetchone()
        assert row is not None
        return int(row[0])


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = (log_dir / f"{name}.log").open("wb")
        self.popen = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            env=env,
            cwd=log_dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.popen.returncode}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not answer {url}")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.log.close()


def start_worker(env: dict[str, str], log_dir: Path, name: str) -> Process:
    port = _free_port()
    worker = Process(name, ["export-worker", "--metrics-port", str(port)], env, log_dir)
    worker.wait_http(f"http://127.0.0.1:{port}/metrics")
    return worker


def request_to_ready(
    client: httpx.Client, token: str, group_id: str, body: dict[str, object]
) -> tuple[float, str]:
    """Seconds from POST to the first GET that says ready; and the download link."""
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    response = client.post(f"/stats/groups/{group_id}/export", json=body, headers=headers)
    if response.status_code != 202:
        raise SystemExit(f"export request refused: {response.status_code} {response.text}")
    location = response.headers["location"]
    while True:
        export = client.get(location, headers=headers).json()
        if export["status"] == "ready":
            return time.perf_counter() - started, str(export["download_url"])
        if export["status"] == "failed":
            raise SystemExit(f"export failed: {export['error']}")
        time.sleep(0.01)


def summary(label: str, seconds: list[float], target: float) -> str:
    median = statistics.median(seconds)
    verdict = "OK" if median <= target else "MISSED"
    return (
        f"{label:<44} median {median:6.3f} s  min {min(seconds):6.3f}  max {max(seconds):6.3f}"
        f"  (n={len(seconds)}, target <= {target:g} s: {verdict})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--big-runs", type=int, default=3)
    args = parser.parse_args()
    secret = secrets.token_urlsafe(32)
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        schema.upgrade(url)
        started = time.perf_counter()
        attempts = load_school(url)
        print(f"loaded {attempts:,} attempts in {time.perf_counter() - started:.1f} s")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORTING_", "OBJECT_"))}
        env.update(
            DATABASE_URL=url,
            REPORTING_JWT_SECRET=secret,
            REPORTING_DATA_DIR=str(work / "data"),
            REPORTING_FILES_DIR=str(work / "files"),
            REPORTING_EXPORT_RATE_LIMIT_PER_HOUR="1000",
            REPORTING_LOG_LEVEL="WARNING",
        )
        port = _free_port()
        api = Process("api", ["reporting", "serve", "--port", str(port)], env, work)
        worker: Process | None = None
        try:
            api.wait_http(f"http://127.0.0.1:{port}/healthz")
            worker = start_worker(env, work, "export-worker-a")
            auth = AuthSettings(REPORTING_JWT_SECRET=secret)
            token = issue_token(auth, role="teacher", sub="bench", group_ids=[SMALL, BIG])
            results: list[str] = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                body = {"topic_ids": [], "period": YEAR}
                request_to_ready(client, token, SMALL, {**body, "format": "pdf"})  # warm-up
                for fmt, target in (("csv", 1.0), ("pdf", 2.0)):
                    times = [
                        request_to_ready(client, token, SMALL, {**body, "format": fmt})[0]
                        for _ in range(args.runs)
                    ]
                    results.append(
                        summary(f"(a) 50 students x 20 topics, 1 year, {fmt}", times, target)
                    )
                worker.stop()
                worker = start_worker(env, work, "export-worker-b")
                big_times: list[float] = []
                link = ""
                for _ in range(args.big_runs):
                    seconds, link = request_to_ready(client, token, BIG, {**body, "format": "csv"})
                    big_times.append(seconds)
                peak = worker.peak_rss_mb()
                csv_bytes = client.get(link).content
                rows = csv_bytes.count(b"\r\n") - 1
            results.append(summary(f"(b) 1,000 students x {TOPICS} topics, csv", big_times, 5.0))
            results.append(
                f"(b) export worker peak RSS (VmHWM)             {peak:6.1f} MB"
                f"  (target <= 250 MB: {'OK' if peak <= 250 else 'MISSED'})"
            )
            results.append(f"(b) rows in the CSV: {rows:,} ({len(csv_bytes) / 1e6:.1f} MB)")
            print("\n".join(results))
        finally:
            if worker is not None:
                worker.stop()
            api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
