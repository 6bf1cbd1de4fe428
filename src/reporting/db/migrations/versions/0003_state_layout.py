"""The running sums change layout: per-(user, topic) rows are keyed (user, level, topic, group),
and progress documents' topic entries begin with their level (see stats/aggregate.py).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Sums written by the other layout cannot be updated by this code (nor the reverse): dropping
# the sentinel makes them invalid (stats/state.py), so the next tick is a full one, which
# replaces the sums and rewrites every document. Nothing else is lost: the sums are derived.
_INVALIDATE = "DROP TABLE IF EXISTS reporting_state.sentinel"


def upgrade() -> None:
    op.execute(_INVALIDATE)


def downgrade() -> None:
    op.execute(_INVALIDATE)
