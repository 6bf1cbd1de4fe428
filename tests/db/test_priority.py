"""db/priority.py against the test server (always on this machine: embedded or 127.0.0.1)."""

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from reporting.db.priority import lower_backend_priority, on_this_machine


def niceness(conn: psycopg.Connection) -> int:
    return os.getpriority(os.PRIO_PROCESS, conn.info.backend_pid)


def may_renice(conn: psycopg.Connection) -> bool:
    """Whether this process may raise the niceness of the backend (same user, or root)."""
    owner = Path("/proc", str(conn.info.backend_pid)).stat().st_uid
    return os.geteuid() in (0, owner)


@pytest.fixture(params=[True, False], ids=["autocommit", "transactional"])
def backend(db_url: str, request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=request.param) as conn:
        yield conn


def test_the_backend_of_a_local_server_is_reniced(backend: psycopg.Connection) -> None:
    before = niceness(backend)
    done = lower_backend_priority(backend, 7)
    if may_renice(backend):
        assert done
        assert niceness(backend) == max(before, 7)
    else:  # a server of another user, without root: left as it was, and said so
        assert not done
        assert niceness(backend) == before
    # No transaction is left open: a tick starts its own (SET TRANSACTION ... first).
    assert backend.info.transaction_status == TransactionStatus.IDLE
    backend.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def test_niceness_is_only_ever_raised_and_zero_leaves_it(backend: psycopg.Connection) -> None:
    # Without the right to renice (a server of another user, no root) nothing ever changes.
    allowed = may_renice(backend)
    expected = max(niceness(backend), 9) if allowed else niceness(backend)
    assert lower_backend_priority(backend, 9) is allowed
    # Lowering the niceness again would need privileges: 3 leaves it at 9.
    assert lower_backend_priority(backend, 3) is allowed
    assert niceness(backend) == expected
    assert not lower_backend_priority(backend, 0)
    assert niceness(backend) == expected


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("/tmp/reporting/pg", True),  # a Unix socket directory
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("db.example.internal", False),
        ("10.0.0.5", False),
        ("", False),
    ],
)
def test_only_sockets_and_loopback_hosts_are_this_machine(host: str, local: bool) -> None:
    assert on_this_machine(host) is local


def test_a_server_reached_by_another_name_is_left_alone(db_url: str) -> None:
    with psycopg.connect(db_url) as probe:
        address = probe.info.hostaddr
    if not address:
        # Only a TCP server can be reached under another name. The embedded one listens on a
        # Unix socket only; .ci/run (make test-pg15) runs this test against PostgreSQL 15.
        pytest.skip("the test server listens on a Unix socket only (the embedded one)")
    # The same server under a name that is not a loopback one: as far as the worker can tell it
    # is another machine, whose pids are not ours to touch.
    with psycopg.connect(
        db_url, host="db.example.internal", hostaddr=address, autocommit=True
    ) as conn:
        assert conn.info.host == "db.example.internal"
        before = niceness(conn)
        assert not lower_backend_priority(conn, 11)
        assert niceness(conn) == before
