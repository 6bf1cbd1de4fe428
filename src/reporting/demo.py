"""`reporting demo`: the whole service on one machine for a first look.

Embedded PostgreSQL, a seeded demo school (Russian names), one analytics tick, then the API, the
analytics worker and the export worker as child processes. Prints the dashboard address and
ready-made tokens, and stops everything on Ctrl-C.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from reporting.auth.tokens import issue_token
from reporting.settings import AuthSettings

DEMO_TTL_SECONDS = 7 * 24 * 3600


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become ready at {base_url} within {timeout:.0f} s")


def _demo_tokens(auth: AuthSettings, teacher_groups: list[tuple[str, str]]) -> list[dict[str, str]]:
    """An admin token and a teacher token for the first groups (the dashboard offers them)."""
    tokens = [
        {
            "label": "Администратор / Admin",
            "role": "admin",
            "groups": "",
            "token": issue_token(
                auth, role="admin", sub="demo-admin", group_ids=[], ttl_seconds=DEMO_TTL_SECONDS
            ),
        }
    ]
    for index in range(0, min(len(teacher_groups), 4), 2):
        pair = teacher_groups[index : index + 2]
        names = ", ".join(name for _, name in pair)
        tokens.append(
            {
                "label": f"Учитель / Teacher: {names}",
                "role": "teacher",
                "groups": names,
                "token": issue_token(
                    auth,
                    role="teacher",
                    sub=f"demo-teacher-{index // 2 + 1}",
                    group_ids=[gid for gid, _ in pair],
                    ttl_seconds=DEMO_TTL_SECONDS,
                    email=f"teacher{index // 2 + 1}@school.example",
                ),
            }
        )
    return tokens


def _port_taken(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port, if it could not (checked before anything
    starts: the readiness probe would otherwise find the other server and call it ours)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def run(*, host: str, port: int, students: int, secret: str) -> int:
    if (reason := _port_taken(host, port)) is not None:
        print(
            f"error: cannot listen on {host}:{port} ({reason}); choose another with --port",
            file=sys.stderr,
        )
        return 2
    os.environ["REPORTING_JWT_SECRET"] = secret
    # The demo signs its own tokens: its processes must verify them with the same secret.
    # Empty counts as unset, and overrides a key in `.env` too.
    os.environ["REPORTING_JWT_PUBLIC_KEY"] = ""
    from reporting.cli import _migrated_url, _settings, spawn
    from reporting.db import embedded
    from reporting.db.engine import connect
    from reporting.ingest.seed import SeedSpec, seed

    settings = _settings(require_jwt=True)
    url = _migrated_url(settings)
    with connect(url) as conn:
        # A database that already holds a school (a seeded demo or real data) is used as it is.
        row = conn.execute("SELECT count(*) FROM groups").fetchone()
        if row is None or row[0] == 0:
            print("seeding the demo school…", flush=True)
            groups = max(4, students // 25)
            seed(
                conn,
                SeedSpec(
                    students=students,
                    groups=groups,
                    topics=24,
                    levels=4,
                    attempts=students * 120,
                    seed=2026,
                ),
            )
        teacher_groups = [
            (str(gid), str(name))
            for gid, name in conn.execute("SELECT id, name FROM groups ORDER BY key LIMIT 4")
        ]

    env = dict(os.environ)
    env.setdefault("REPORTING_WORKER_INTERVAL_SECS", "300")
    # A first look shows attempts arriving within seconds, unless the environment or .env says
    # otherwise (the service's own default stays off, CONTRACT §4).
    live = True
    if "enable_live_updates" in settings.worker.model_fields_set:
        live = settings.worker.enable_live_updates  # as the children will read it
    else:
        env["REPORTING_ENABLE_LIVE_UPDATES"] = "true"
    env.setdefault("REPORTING_PUBLIC_URL", f"http://{host}:{port}")
    tokens = _demo_tokens(settings.auth, teacher_groups)
    tokens_file = settings.database.data_dir / "demo-tokens.json"
    tokens_file.write_text(json.dumps(tokens, ensure_ascii=False))
    tokens_file.chmod(0o600)
    env["REPORTING_DEMO_TOKENS_FILE"] = str(tokens_file.resolve())

    print("computing the first statistics…", flush=True)
    first_tick = spawn(["reporting-worker", "--once"], env)
    if first_tick.wait() != 0:
        print("error: the first analytics tick failed", file=sys.stderr)
        return 1

    children = [
        spawn(["reporting", "serve", "--host", host, "--port", str(port)], env),
        spawn(["reporting-worker"], env),
        spawn(["export-worker"], env),
    ]
    base_url = f"http://{host}:{port}"
    try:
        _wait_ready(base_url, children[0])
        service = issue_token(
            settings.auth,
            role="service",
            sub="demo-platform",
            group_ids=[],
            ttl_seconds=DEMO_TTL_SECONDS,
        )
        _print_welcome(
            base_url,
            tokens,
            service,
            settings.database.data_dir,
            secret_file=_secret_file(settings.database.data_dir, secret),
            embedded=not settings.database.url,
            live=live,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a demo process exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()  # reaped here, not left to whoever adopts it
        if not settings.database.url:
            # A child that died before detaching would keep the server up after the demo's own
            # detach at exit; all of them have exited now.
            embedded.release_dead_handles(settings.database.data_dir)


def _secret_file(data_dir: Path, secret: str) -> Path | None:
    """The file holding the demo's secret, when that is where `secret` came from."""
    path = (data_dir / "demo-jwt-secret").resolve()
    return path if path.exists() and path.read_text().strip() == secret else None


def _print_welcome(
    base_url: str,
    tokens: list[dict[str, str]],
    service: str,
    data_dir: Path,
    *,
    secret_file: Path | None,
    embedded: bool,
    live: bool,
) -> None:
    command = (
        f"{Path(sys.executable).parent / 'reporting'} token --role teacher --groups ID --sub ME"
    )
    # With the demo's own secret (kept in the data dir) unless REPORTING_JWT_SECRET was given.
    sign = f"REPORTING_JWT_SECRET=$(cat {secret_file}) {command}" if secret_file else command
    lines = [
        "",
        "Reporting & Analytics demo is running.",
        f"  Dashboard:  {base_url}/dashboard",
        f"  API docs:   {base_url}/docs",
        f"  Metrics:    {base_url}/metrics",
        f"  Data:       {data_dir.resolve()}"
        + (" (embedded PostgreSQL)" if embedded else " (the database is DATABASE_URL's)"),
        "  Live updates: "
        + ("on (ingested attempts reach the dashboard within seconds)" if live else "off"),
        "",
        "Tokens (also offered on the dashboard's sign-in page):",
    ]
    for token in tokens:
        lines += [f"  {token['label']}:", f"    {token['token']}"]
    lines += [
        "  Платформа / Platform (PUT /ingest/directory, POST /ingest/attempts):",
        f"    {service}",
        "",
        f"More tokens: {sign}",
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
