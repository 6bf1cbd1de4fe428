"""Shared fixtures: a real PostgreSQL (embedded 18 by default, any server via TEST_DATABASE_URL),
a migrated template database cloned per need, settings, tokens and an ASGI client.

- `db_url`: one migrated database for the whole session.
- `conn`: a connection to it inside a transaction that is rolled back after the test.
- `fresh_db_url`: a new migrated database of its own (tests that need several connections,
  processes or committed data), dropped afterwards.
"""

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from reporting.auth.tokens import issue_token
from reporting.db import schema
from reporting.settings import (
    AuthSettings,
    DatabaseSettings,
    ExportSettings,
    Settings,
    StorageSettings,
    load_settings,
)

JWT_SECRET = "test-secret-" + "x" * 24


def _with_database(server_url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL to a maintenance database on a running PostgreSQL server."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    from reporting.db import embedded

    data_dir = Path(tempfile.mkdtemp(prefix="reporting-test-pg-"))
    url = embedded.server_uri(data_dir)
    yield _with_database(url, "postgres")
    embedded.stop_server(data_dir, force=True)
    shutil.rmtree(data_dir, ignore_errors=True)


# Every test's local-storage directory lives under one per session, removed at its end.
_FILES_ROOT = Path(tempfile.mkdtemp(prefix="reporting-test-files-"))


@pytest.fixture(scope="session", autouse=True)
def _remove_files_root() -> Iterator[None]:
    yield
    shutil.rmtree(_FILES_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A migrated database used as the template of every database a test asks for."""
    name = f"reporting_tmpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    schema.upgrade(_with_database(server_url, name))
    yield name
    _drop_database(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _clone(server_url: str, template: str) -> str:
    name = f"reporting_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name


@pytest.fixture(scope="session")
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    name = _clone(server_url, template_db)
    yield _with_database(server_url, name)
    _drop_database(server_url, name)


@pytest.fixture
def fresh_db_url(server_url: str, template_db: str) -> Iterator[str]:
    name = _clone(server_url, template_db)
    yield _with_database(server_url, name)
    _drop_database(server_url, name)


@pytest.fixture(scope="module")
def module_db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database shared by the tests of one module (committed data, a running app)."""
    name = _clone(server_url, template_db)
    yield _with_database(server_url, name)
    _drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A connection whose work is rolled back when the test ends."""
    with psycopg.connect(db_url) as connection:
        yield connection
        connection.rollback()


def make_settings(db_url: str | None = None, **sections: object) -> Settings:
    """Settings for tests: a known JWT secret, local storage in a temp dir, overrides per section."""
    defaults: dict[str, object] = {
        "auth": AuthSettings(REPORTING_JWT_SECRET=JWT_SECRET),
        "database": DatabaseSettings(DATABASE_URL=db_url),
        # A temp dir of its own, so exports never land in ./.reporting; share the settings
        # object between an app and a worker that must see the same files.
        "storage": StorageSettings(REPORTING_FILES_DIR=Path(tempfile.mkdtemp(dir=_FILES_ROOT))),
        "exports": ExportSettings(),
    }
    defaults.update(sections)
    return load_settings(**defaults)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


TokenFactory = Callable[..., str]


@pytest.fixture
def make_token() -> TokenFactory:
    """make_token(role, groups=[...], sub=..., ttl=..., email=..., locale=...) -> signed JWT."""

    def factory(
        role: str,
        groups: list[str] | None = None,
        sub: str | None = None,
        ttl: int = 3600,
        email: str | None = None,
        locale: str | None = None,
    ) -> str:
        return issue_token(
            AuthSettings(REPORTING_JWT_SECRET=JWT_SECRET),
            role=role,
            sub=sub or f"{role}-{secrets.token_hex(4)}",
            group_ids=groups or [],
            ttl_seconds=ttl,
            email=email,
            locale=locale,
        )

    return factory


@pytest.fixture
async def api(settings: Settings, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the ASGI app (lifespan run), on the session database."""
    async with api_client(settings, db_url) as client:
        yield client


@contextlib.asynccontextmanager
async def api_client(settings: Settings, db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over a fresh app on `db_url` (its lifespan runs around the block)."""
    from reporting.app import create_app

    app = create_app(settings, url=db_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
