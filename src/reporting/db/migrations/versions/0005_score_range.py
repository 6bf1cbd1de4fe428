"""Attempt scores are bounded, so that no sum of them can overflow a tick.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Ingestion refuses scores beyond ±1e9 (ingest/schemas.py MAX_ABS_SCORE). Two scores of 1e308 made
# every later tick fail with "value out of range: overflow" when adding them up, freezing every
# figure of the school. The constraint holds for rows written by other means too; NOT VALID: the
# rows already stored are not scanned (a large table would be locked meanwhile).
UPGRADE = """
ALTER TABLE attempts ADD CONSTRAINT attempts_score_range
    CHECK (score BETWEEN -1e9 AND 1e9) NOT VALID
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("ALTER TABLE attempts DROP CONSTRAINT attempts_score_range")
