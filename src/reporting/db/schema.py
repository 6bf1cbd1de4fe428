"""The schema lives in Alembic migrations (db/migrations); this module runs and checks them."""

from functools import cache
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolation: a literal % in the URL must be doubled
    config.set_main_option("sqlalchemy.url", _sqlalchemy_url(url).replace("%", "%%"))
    return config


class UnknownRevision(Exception):
    """The database's schema is at a revision these migrations do not know (a newer version of
    the service migrated it); str() is one line saying so."""


def upgrade(url: str) -> None:
    """Create or upgrade the schema to the newest revision; safe to run concurrently."""
    try:
        command.upgrade(alembic_config(url), "head")
    except CommandError as error:
        if "Can't locate revision" not in str(error):
            raise
        raise UnknownRevision(
            f"the database's schema is newer than this version of the service knows"
            f" (its migrations end at {head_revision()}; {error}): run the newer version,"
            " or restore a backup made before it migrated"
        ) from None


@cache  # the migrations on disk do not change while the process runs; /readyz asks often
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: psycopg.AsyncConnection) -> str | None:
    """The revision the database's schema is at; None before the first migration."""
    try:
        cur = await conn.execute("SELECT version_num FROM alembic_version")
    except psycopg.errors.UndefinedTable:
        return None
    row = await cur.fetchone()
    return None if row is None else str(row[0])
