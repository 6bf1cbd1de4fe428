"""A teacher sees their exports only of the groups that are still theirs.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The requester's own exports were visible whatever the token's groups: a teacher who no longer
# had a group still read its exports and signed fresh download links to its students' data.
# The hourly quota still counts every export of the requester (CONTRACT §5: per `sub`), the
# hidden ones too, so it is read through a function that sees past the policy.
UPGRADE = """
DROP POLICY scoped_read ON report_exports;
CREATE POLICY scoped_read ON report_exports FOR SELECT
    USING (reporting_scope_is_admin() OR (
        requested_by = reporting_scope_sub() AND group_id = ANY (reporting_scope_groups())));

CREATE FUNCTION reporting_export_quota(requester text, window_length interval)
RETURNS TABLE (used bigint, oldest timestamptz, now timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*), min(created_at), clock_timestamp() FROM report_exports
    WHERE requested_by = requester AND created_at > clock_timestamp() - window_length
$$;
"""

DOWNGRADE = """
DROP FUNCTION reporting_export_quota(text, interval);
DROP POLICY scoped_read ON report_exports;
CREATE POLICY scoped_read ON report_exports FOR SELECT
    USING (reporting_scope_is_admin() OR requested_by = reporting_scope_sub());
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
