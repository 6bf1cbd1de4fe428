"""Connections: where the database is, the API's pool and the per-request scoped transaction.

The API reads tenant data only through `Database.scoped(scope)`: one transaction that switches to
the non-owner role `reporting_api` and publishes the caller's role, subject and group ids as
transaction-local settings, which the row-level security policies read. Nothing leaks to the
next user of a pooled connection because every setting is `is_local`.
"""

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from reporting.auth.scope import Scope
from reporting.errors import ServiceUnavailable
from reporting.settings import DatabaseSettings

log = logging.getLogger(__name__)

API_ROLE = "reporting_api"

# How long a request waits for a pooled connection. With the pool's default (30 s), every request
# waited 30 s while the database was down and then answered 500; the brief allows 5 s a call.
ACQUIRE_TIMEOUT_SECS = 3.0
RETRY_AFTER_SECS = 5

_SCOPE_SQL = (
    "SELECT set_config('app.role', %s, true), set_config('app.sub', %s, true),"
    " set_config('app.group_ids', %s, true), set_config('role', %s, true)"
)


def database_url(settings: DatabaseSettings) -> str:
    """DATABASE_URL when set, else the embedded server under REPORTING_DATA_DIR (started on demand)."""
    if settings.url:
        return settings.url
    from reporting.db import embedded

    return embedded.server_uri(settings.data_dir)


def scope_params(scope: Scope) -> tuple[str, str, str, str]:
    return (scope.role, scope.sub, json.dumps(sorted(scope.group_ids)), API_ROLE)


def apply_scope(conn: psycopg.Connection, scope: Scope) -> None:
    """Inside an open transaction: drop to the API role with the caller's scope (sync flavour)."""
    if not scope.is_system:
        conn.execute(_SCOPE_SQL, scope_params(scope))


@contextmanager
def connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A plain connection for the CLI and the workers (owner rights: the system scope)."""
    with psycopg.connect(url, autocommit=autocommit, application_name="reporting") as conn:
        yield conn


class Database:
    """The API's connection pool; open in the app lifespan, close at shutdown."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16) -> None:
        self.url = url
        self.pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"application_name": "reporting-api"},
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def scoped(self, scope: Scope) -> AsyncIterator[psycopg.AsyncConnection]:
        """One transaction under the caller's scope; commits on success, rolls back on error.

        A database that cannot be reached (or a connection lost meanwhile) is a 503 with
        Retry-After, within ACQUIRE_TIMEOUT_SECS: the caller may try again, nothing was done.
        """
        try:
            async with (
                self.pool.connection(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
                conn.transaction(),
            ):
                if not scope.is_system:
                    await conn.execute(_SCOPE_SQL, scope_params(scope))
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as error:
            log.warning("the database is unavailable", extra={"error": str(error)})
            raise ServiceUnavailable(
                "The database is unavailable; try again shortly.",
                headers={"Retry-After": str(RETRY_AFTER_SECS)},
            ) from error
