"""Alembic environment: runs the migrations under an advisory lock so concurrent starts are safe."""

from alembic import context
from sqlalchemy import create_engine, text

MIGRATION_LOCK = 7_351_001

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=None)

with engine.connect() as connection:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
    connection.commit()
    try:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        connection.commit()
engine.dispose()
