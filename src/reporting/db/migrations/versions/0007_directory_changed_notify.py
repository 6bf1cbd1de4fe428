"""A change that invalidates the running sums also says so on `directory_changed`.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# With live updates on, the analytics worker ticks when attempts arrive (attempts_ingested). A
# directory change (a topic moved to another level, a student renamed) waited for the next
# scheduled tick, an hour by default, while the pages already showed the new directory. The
# worker now listens here too; the notice is sent at commit, from every way of writing.
_BUMP = """
    UPDATE aggregate_state SET directory_version = directory_version + 1;
    PERFORM pg_notify('directory_changed', '');"""

UPGRADE = f"""
CREATE OR REPLACE FUNCTION reporting_directory_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Statement triggers fire for statements that changed nothing too (an upsert of unchanged
    -- rows): only a real change invalidates the sums.
    IF EXISTS (SELECT 1 FROM changed_rows) THEN{_BUMP}
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION reporting_sums_source_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN{_BUMP}
    RETURN NULL;
END $$;
"""

DOWNGRADE = UPGRADE.replace("\n    PERFORM pg_notify('directory_changed', '');", "")


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
