"""The running sums are also invalidated when attempts are deleted, updated or truncated, and when
a directory table is truncated.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Incremental ticks only add what attempt_queue holds (migration 0002). The service never changes
# or removes an attempt, but an operator or a test harness may (a DELETE of test data, a TRUNCATE
# between cases): the sums would then still count attempts that are gone, and every later
# incremental tick would build on them. Such a statement bumps directory_version (the version of
# everything the sums are computed from), so the next tick is a full one. TRUNCATE triggers get no
# transition table: they always bump. A TRUNCATE of user_groups needs nothing (memberships are
# read at request time).
_TABLES = ("groups", "users", "levels", "topics")

UPGRADE = r"""
CREATE FUNCTION reporting_sums_source_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE aggregate_state SET directory_version = directory_version + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER attempts_updated AFTER UPDATE ON attempts REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_directory_changed();
CREATE TRIGGER attempts_deleted AFTER DELETE ON attempts REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_directory_changed();
CREATE TRIGGER attempts_truncated AFTER TRUNCATE ON attempts
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_sums_source_truncated();
""" + "".join(
    f"""
CREATE TRIGGER {table}_truncated AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_sums_source_truncated();"""
    for table in _TABLES
)

DOWNGRADE = (
    "".join(f"DROP TRIGGER {table}_truncated ON {table};\n" for table in ("attempts", *_TABLES))
    + """
DROP TRIGGER attempts_deleted ON attempts;
DROP TRIGGER attempts_updated ON attempts;
DROP FUNCTION reporting_sums_source_truncated();
"""
)


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
