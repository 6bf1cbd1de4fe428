"""Incremental aggregation: the queue of attempts not yet aggregated, and the state's validity.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The analytics worker keeps running sums (schema reporting_state, written by a full tick, then
# updated by incremental ticks; see stats/incremental.py). What it has not folded in yet waits
# in attempt_queue: a trigger fills it in the transaction that inserts the attempts, so an
# attempt is either in both or in neither, whatever path inserted it (API, CLI, psql). A tick
# consumes the queue with DELETE ... RETURNING in the transaction that updates the sums, so each
# attempt is counted exactly once even while ingestion goes on.
#
# Directory edits can change what the sums mean (a topic moved to another level) or what the
# derived records hold (new users, renamed students): they bump directory_version, and the sums
# are valid only while state_version (the directory version the last full tick saw) equals it.
SCHEMA = r"""
CREATE TABLE attempt_queue (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_key      integer NOT NULL,
    group_key     integer NOT NULL,
    topic_key     integer NOT NULL,
    is_correct    boolean NOT NULL,
    score         double precision NOT NULL,
    hints_used    integer NOT NULL,
    time_spent_ms bigint NOT NULL,
    attempted_at  timestamptz NOT NULL
);

CREATE FUNCTION reporting_queue_attempts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attempt_queue (user_key, group_key, topic_key, is_correct, score, hints_used,
                               time_spent_ms, attempted_at)
    SELECT user_key, group_key, topic_key, is_correct, score, hints_used, time_spent_ms,
           attempted_at
    FROM new_attempts;
    RETURN NULL;
END $$;

-- A transition table holds only the rows really inserted: duplicates skipped by
-- ON CONFLICT DO NOTHING never reach the queue.
CREATE TRIGGER attempts_queue AFTER INSERT ON attempts
    REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION reporting_queue_attempts();

CREATE TABLE aggregate_state (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    directory_version bigint NOT NULL DEFAULT 1,
    state_version     bigint NOT NULL DEFAULT 0,
    state_tick_id     bigint
);
INSERT INTO aggregate_state DEFAULT VALUES;

CREATE FUNCTION reporting_directory_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Statement triggers fire for statements that changed nothing too (an upsert of unchanged
    -- rows): only a real change invalidates the sums.
    IF EXISTS (SELECT 1 FROM changed_rows) THEN
        UPDATE aggregate_state SET directory_version = directory_version + 1;
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE
    tbl text;
BEGIN
    -- user_groups is not here: memberships are read at request time, never aggregated.
    FOREACH tbl IN ARRAY ARRAY['groups', 'users', 'levels', 'topics'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION reporting_directory_changed()',
                       tbl || '_inserted', tbl);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING NEW TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION reporting_directory_changed()',
                       tbl || '_updated', tbl);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION reporting_directory_changed()',
                       tbl || '_deleted', tbl);
    END LOOP;
END $$;

-- Written by the full tick (its staging tables are moved here whole), updated by incremental
-- ticks; read by nobody else, so no grants to reporting_api.
CREATE SCHEMA reporting_state;

-- Shared by the full and the incremental tick, so both write the same bytes for the same sums.
-- One totals/levels/topics entry of a progress_summary; `head` opens the object.
CREATE FUNCTION reporting_state.progress_entry(
    head text, attempts bigint, correct bigint, score float8, hints bigint, time_ms float8
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT concat(head, '"attempts":', attempts, ',"correct":', correct,
                  ',"accuracy":', correct::float8 / attempts, ',"score":', score,
                  ',"hints_used":', hints, ',"avg_time_seconds":', time_ms / 1000 / attempts, '}')
$$;

-- The KPIs of CONTRACT §2 from a scope's sums; a scope without attempts (NULLs from an outer
-- join included) gets zeros. Built as text, like the progress entries.
CREATE FUNCTION reporting_state.kpi(
    attempts bigint, users bigint, sum_accuracy float8, sum_score float8,
    hinted bigint, hints bigint, time_ms float8
) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN attempts > 0 THEN
        concat('{"total_attempts":', attempts, ',"total_users":', users,
               ',"avg_accuracy":', sum_accuracy / users, ',"avg_score":', sum_score / users,
               ',"hint_usage_rate":', hinted::float8 / attempts,
               ',"avg_hints":', hints::float8 / attempts,
               ',"avg_time_seconds":', time_ms / 1000 / attempts, '}')::jsonb
    ELSE '{"total_attempts": 0, "total_users": 0, "avg_accuracy": 0.0, "avg_score": 0.0,
           "hint_usage_rate": 0.0, "avg_hints": 0.0, "avg_time_seconds": 0.0}'::jsonb
    END
$$;


-- Attempts already in the database when this revision is applied were never queued: the sums
-- are built from them by the first full tick (state_version 0 is never valid).
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS reporting_state CASCADE")
    op.execute("DROP TRIGGER IF EXISTS attempts_queue ON attempts")
    for table in ("groups", "users", "levels", "topics"):
        for event in ("inserted", "updated", "deleted"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{event} ON {table}")
    op.execute("DROP TABLE IF EXISTS attempt_queue, aggregate_state")
    op.execute("DROP FUNCTION IF EXISTS reporting_queue_attempts, reporting_directory_changed")
