"""Background work at a lower CPU priority, for the server processes that run it.

A tick keeps its PostgreSQL backends busy for seconds to a minute. When the server runs on the
machine that also runs the API (the embedded server, a one-box install), those backends compete
with the API for the same cores. Lowering the niceness of the tick's own backends lets the
scheduler give readers the cores first; the tick only takes longer while the machine is
saturated. (It is not the whole story: on 2 cores under wrk, the p99 of a group page during a
full tick's per-user phase was no better with the backends under SCHED_IDLE than at nice 19.)

PostgreSQL has no SQL for this, so the worker renices the backend process itself, and only when
it can be sure that process is the one serving its connection: the server is on this machine
(a Unix socket or a loopback address), and the pid is a `postgres` process whose working
directory is the server's data directory (a backend runs there). Anything else — a remote or
containerized server, a role that may not read `data_directory`, a non-Linux system — leaves the
priority as it is.
"""

import logging
import os
import sys
from pathlib import Path

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def on_this_machine(host: str) -> bool:
    """Whether a connection's `host` is a Unix socket directory or a loopback address."""
    return host.startswith("/") or host in _LOOPBACK


def lower_backend_priority(conn: psycopg.Connection, niceness: int) -> bool:
    """Raise the niceness of `conn`'s server process to at least `niceness` (0: leave it);
    returns whether it was done. Never raises for a backend it cannot reach."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return False
    if not on_this_machine(conn.info.host):
        return False
    pid = conn.info.backend_pid
    proc = Path("/proc", str(pid))
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        if (proc / "comm").read_text().strip() != "postgres":
            return False
        row = conn.execute("SELECT current_setting('data_directory', true)").fetchone()
        data_directory = row[0] if row else None
        if not data_directory or os.readlink(proc / "cwd") != os.path.realpath(data_directory):
            return False
        current = os.getpriority(os.PRIO_PROCESS, pid)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except (OSError, psycopg.Error) as error:
        log.debug("backend priority left as it is", extra={"pid": pid, "error": str(error)})
        return False
    finally:
        if idle and not conn.autocommit:
            conn.rollback()  # leave no transaction open: the caller may start its own kind
    return True
