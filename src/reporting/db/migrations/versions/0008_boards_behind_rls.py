"""A teacher's view of the global and level boards comes from the database, not the query.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A global or level board is one row whose rankings name learners of every group. The policy let
# a teacher read those rows whole and left it to the API's query to keep only the teacher's
# learners: a query that forgot that filter showed every learner's name and score (CONTRACT §5
# wants no foreign rows even then). Now a teacher's scope sees only their groups' boards in the
# table, and reads any board through reporting_visible_board, which filters the rankings by the
# transaction's published scope itself (each entry keeps its rank on the whole board).
UPGRADE = """
DROP POLICY scoped ON leaderboards;
CREATE POLICY scoped ON leaderboards FOR SELECT
    USING (reporting_scope_is_admin()
           OR (scope = 'group' AND scope_id = ANY (reporting_scope_groups())));

CREATE FUNCTION reporting_visible_board(board_scope text, board_id text)
RETURNS TABLE (scope text, scope_id text, computed_at timestamptz, expires_at timestamptz,
               rankings jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT lb.scope, lb.scope_id, lb.computed_at, lb.expires_at,
           CASE WHEN reporting_scope_is_admin() OR lb.scope = 'group' THEN lb.rankings
           ELSE coalesce((
               SELECT jsonb_agg(r.entry ORDER BY r.position)
               FROM jsonb_array_elements(lb.rankings) WITH ORDINALITY AS r (entry, position)
               WHERE r.entry ->> 'user_id' IN (
                   SELECT u.id FROM users u WHERE u.key IN (SELECT reporting_scope_user_keys()))
           ), '[]') END
    FROM leaderboards lb
    WHERE lb.scope = board_scope AND lb.scope_id = board_id
      AND (reporting_scope_is_admin() OR lb.scope <> 'group'
           OR lb.scope_id = ANY (reporting_scope_groups()))
$$;
"""

DOWNGRADE = """
DROP FUNCTION reporting_visible_board(text, text);
DROP POLICY scoped ON leaderboards;
CREATE POLICY scoped ON leaderboards FOR SELECT
    USING (reporting_scope_is_admin() OR scope <> 'group'
           OR scope_id = ANY (reporting_scope_groups()));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
