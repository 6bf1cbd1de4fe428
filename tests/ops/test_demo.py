"""`reporting demo` as a newcomer runs it: it prints where the dashboard is and tokens that work,
turns live updates on, tells how to sign more tokens, and Ctrl-C stops everything it started.

On a database of its own through DATABASE_URL (the embedded server is the README's path and is
exercised by the lifecycle tests; here the demo's own behaviour is under test).
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from tests.ops.processes import BIN, service_env
from tests.servers import free_port

pytestmark = pytest.mark.slow

BANNER_END = "Press Ctrl-C to stop."
START_TIMEOUT_S = 180


def _banner(process: subprocess.Popen[str]) -> list[str]:
    """The demo's output up to the end of its welcome banner."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the demo exited ({process.poll()}):\n" + "".join(lines))
        lines.append(line.rstrip("\n"))
        if line.strip() == BANNER_END:
            return lines
    raise AssertionError("no welcome banner in time:\n" + "\n".join(lines))


def _token_after(lines: list[str], label: str) -> str:
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(label))
    return lines[index + 1].strip()


@dataclass(frozen=True)
class _Process:
    pid: int
    state: str  # "Z": exited, not yet reaped by whoever adopted it
    parent: int
    group: int
    args: list[str]


def _processes() -> Iterator[_Process]:
    """Every process of the machine, from /proc (those that vanish meanwhile are skipped)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            args = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield _Process(
            pid=int(stat.parent.name),
            state=fields[0],
            parent=int(fields[1]),
            group=int(fields[2]),
            args=[a.decode(errors="replace") for a in args if a],
        )


def _running_in_group(pgid: int) -> list[str]:
    """The processes of a process group that still run (zombies do not count)."""
    return [
        f"{p.pid} {p.state} {' '.join(p.args)}"
        for p in _processes()
        if p.group == pgid and p.state != "Z"
    ]


def _children(pid: int) -> dict[str, int]:
    """The direct children of `pid`, by the console script they run."""
    return {
        Path(p.args[1]).name: p.pid for p in _processes() if p.parent == pid and len(p.args) > 1
    }


def _embedded_server_runs(data_dir: Path) -> bool:
    pgdata = str((data_dir / "pg").resolve())
    return any(
        p.args and p.args[0].endswith("/postgres") and pgdata in p.args for p in _processes()
    )


@contextmanager
def _demo(tmp_path: Path, env: dict[str, str], *options: str) -> Iterator[subprocess.Popen[str]]:
    """`reporting demo` in a process group of its own (as a terminal's Ctrl-C reaches it),
    killed with all it started if the test leaves it running."""
    process = subprocess.Popen(
        [str(BIN / "reporting"), "demo", *options],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_the_demo_prints_working_tokens_and_stops_on_ctrl_c(
    tmp_path: Path, fresh_db_url: str
) -> None:
    port = free_port()
    env = service_env(database_url=fresh_db_url, data_dir=tmp_path / "data")
    del env["REPORTING_JWT_SECRET"]  # the demo makes and keeps its own
    # ... in the data dir that `.env` names (CONTRACT §4: .env is read too)
    (tmp_path / ".env").write_text(f"REPORTING_DATA_DIR={env.pop('REPORTING_DATA_DIR')}\n")
    env["REPORTING_LOG_JSON"] = "false"
    with _demo(tmp_path, env, "--port", str(port), "--students", "40") as process:
        lines = _banner(process)
        banner = "\n".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"Dashboard:  {base}/dashboard" in banner
        assert "Live updates: on" in banner
        # Each process checks the schema at start; alembic's boilerplate is not printed.
        assert "setup plugin" not in banner and "Context impl" not in banner
        assert "HTTP Request:" not in banner  # httpx's line per readiness poll

        admin = _token_after(lines, "Администратор / Admin:")
        teacher = _token_after(lines, "Учитель / Teacher:")
        service = _token_after(lines, "Платформа / Platform")
        claims = jwt.decode(teacher, options={"verify_signature": False})
        assert jwt.decode(service, options={"verify_signature": False})["role"] == "service"
        with httpx.Client(base_url=base, timeout=30) as client:
            page = client.get("/dashboard")
            assert page.status_code == 200 and 'data-live-updates="on"' in page.text
            groups = client.get(
                "/dashboard/api/groups", headers={"Authorization": f"Bearer {admin}"}
            ).json()["groups"]
            own = claims["group_ids"][0]
            foreign = next(g["id"] for g in groups if g["id"] not in claims["group_ids"])
            as_teacher = {"Authorization": f"Bearer {teacher}"}
            assert client.get(f"/stats/groups/{own}", headers=as_teacher).status_code == 200
            assert client.get(f"/stats/groups/{foreign}", headers=as_teacher).status_code == 403
            service_headers = {"Authorization": f"Bearer {service}"}
            empty = {"groups": [], "users": [], "levels": [], "topics": []}
            assert client.put("/ingest/directory", json=empty, headers=service_headers).is_success

            # The printed recipe for more tokens signs ones the demo's API accepts.
            recipe = next(line for line in lines if line.startswith("More tokens: "))
            command = recipe.removeprefix("More tokens: ").replace("ID", own).replace("ME", "me")
            signed = subprocess.run(
                ["bash", "-c", command],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.strip()
            mine = {"Authorization": f"Bearer {signed}"}
            assert client.get(f"/stats/groups/{own}", headers=mine).status_code == 200

        assert (tmp_path / "data" / "demo-jwt-secret").exists()
        assert not (tmp_path / ".reporting").exists()

        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
        assert process.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (left := _running_in_group(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running from the demo: {left}"


def test_a_child_killed_without_detaching_does_not_keep_the_embedded_server_up(
    tmp_path: Path,
) -> None:
    """A demo process that dies before its exit hooks run (here SIGKILL) leaves its pid among
    the server's users; the demo releases it once its children are gone, so the server stops
    with the demo instead of running on with nobody attached."""
    data_dir = tmp_path / "data"
    env = service_env(database_url=None, data_dir=data_dir)
    del env["REPORTING_JWT_SECRET"]
    try:
        with _demo(tmp_path, env, "--port", str(free_port()), "--students", "20") as process:
            _banner(process)
            assert _embedded_server_runs(data_dir)
            os.kill(_children(process.pid)["export-worker"], signal.SIGKILL)

            assert process.wait(timeout=60) == 1  # "a demo process exited; stopping the others"
            deadline = time.monotonic() + 15
            while _embedded_server_runs(data_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _embedded_server_runs(data_dir), "the embedded server outlived the demo"
    finally:
        subprocess.run(
            [str(BIN / "reporting"), "db", "stop"], env=env, capture_output=True, timeout=60
        )


def test_a_port_in_use_stops_the_demo_before_it_starts_anything(
    tmp_path: Path, fresh_db_url: str
) -> None:
    """Another server on the port answered the demo's readiness probe: it printed tokens for
    that server, then its own API failed to listen."""
    env = service_env(database_url=fresh_db_url, data_dir=tmp_path / "data")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with _demo(tmp_path, env, "--port", str(port)) as process:
            assert process.stdout is not None
            output = process.stdout.read()
            assert process.wait(timeout=60) == 2, output
    assert output.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use);"
        " choose another with --port"
    ]
