"""The export quota function tells a caller only their own quota; the API reads no tick log.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# reporting_export_quota reads report_exports past row-level security (SECURITY DEFINER: a
# request must count its requester's exports of groups no longer theirs), and it took the
# requester as an argument that anyone could execute: under a teacher's scope,
# reporting_export_quota('another-teacher', '1 day') told how many exports that teacher made and
# when (security review). The API only ever asks for its caller's sub; now the function counts
# nothing for anyone else unless the scope is an admin's, and only the API's role may call it.
UPGRADE = """
CREATE OR REPLACE FUNCTION reporting_export_quota(requester text, window_length interval)
RETURNS TABLE (used bigint, oldest timestamptz, now timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*), min(created_at), clock_timestamp() FROM report_exports
    WHERE requested_by = requester AND created_at > clock_timestamp() - window_length
      AND (requester = reporting_scope_sub() OR reporting_scope_is_admin())
$$;
REVOKE EXECUTE ON FUNCTION reporting_export_quota(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reporting_export_quota(text, interval) TO reporting_api;

-- The API never reads worker_ticks (the workers do); its details told any scope school-wide
-- counts (how many groups, attempts, students).
REVOKE SELECT ON worker_ticks FROM reporting_api;
"""

DOWNGRADE = """
CREATE OR REPLACE FUNCTION reporting_export_quota(requester text, window_length interval)
RETURNS TABLE (used bigint, oldest timestamptz, now timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT count(*), min(created_at), clock_timestamp() FROM report_exports
    WHERE requested_by = requester AND created_at > clock_timestamp() - window_length
$$;
GRANT EXECUTE ON FUNCTION reporting_export_quota(text, interval) TO PUBLIC;
GRANT SELECT ON worker_ticks TO reporting_api;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
