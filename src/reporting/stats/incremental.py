"""An incremental tick: the attempts queued since the last tick are folded into the running sums,
and only the derived records they touch are rewritten. Its cost follows the new attempts and the
history of the students who made them, not the whole school's.

Everything happens in ONE transaction, so readers see all of a tick or none of it, and the queue
rows are consumed (DELETE ... RETURNING) in the transaction that counts them: an attempt queued
while the tick runs is either in this tick or left for the next, never lost, never counted twice.

From the running sums (state.py), every metric of CONTRACT §2 is derived the way the full tick
derives it, through the same SQL functions (reporting_state.kpi / progress_entry):
- A scope's counts and additive sums (attempts, hinted attempts, hints, time, score) grow by the
  new attempts' sums. Its users and its sum of per-user accuracies change only by the users the
  new attempts touch: from each one's (attempts, correct) in the scope before and after, both
  exact integers.
- Leaderboards of the scopes touched (global, the groups, the levels) are recomputed from the
  per-user sums through an index on score: the top N and their ties, so ranks stay exact.
  Boards not recomputed for an hour are recomputed too, so none expires while the worker runs.
- The progress documents of the students touched are rewritten: `totals` rebuilt from their
  sums, and in `levels` and `topics` only the entries of the levels they worked on (_SPANS).

Floating-point sums (scores, accuracies) are added in another order than a full tick adds them:
they agree with a full recompute to ~1e-15 relative, not bit for bit; counts agree exactly.
`reporting-worker --full` recomputes everything and rebuilds the sums.
"""

import logging
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import LiteralString

import psycopg
from psycopg import sql

from reporting.db import channels
from reporting.settings import Settings
from reporting.stats import aggregate, state, ticks
from reporting.stats.cache import change_payload
from reporting.stats.ticks import TickResult

log = logging.getLogger(__name__)

# Boards older than this are recomputed by the next tick even without new attempts in their
# scope (a board expires 24 h after it was computed and is never served after that).
BOARD_REFRESH_AGE = "1 hour"

_TEMP_TABLES: LiteralString = """
CREATE TEMP TABLE delta (
    user_key integer, group_key integer, topic_key integer, is_correct boolean, score float8,
    hints_used integer, time_spent_ms bigint, attempted_at timestamptz
) ON COMMIT DROP;
-- Per (scope, user): (attempts, correct) before and after, for the users and accuracy sums.
CREATE TEMP TABLE contributions (
    type text, key_1 integer, key_2 integer, old_n bigint, old_c bigint, new_n bigint,
    new_c bigint
) ON COMMIT DROP;
-- Per touched student: the rebuilt `totals`, and the run of levels lo..hi (by ordinal) whose
-- entries are rebuilt in `levels` (levels_run) and `topics`. Of each stored text, the bytes
-- after its '[' up to *_before are kept before the run and, when *_after is set, its bytes from
-- there to before the closing ']' after it; `whole` (a document not as the sums say): rebuilt.
CREATE TEMP TABLE spans (
    half smallint, user_key integer, user_id text, totals text, last_at timestamptz,
    whole boolean, lo integer, hi integer, levels_run text, t_before integer, t_after integer,
    l_before integer, l_after integer
) ON COMMIT DROP;
CREATE TEMP TABLE changed_scopes (
    type text, key_1 integer, key_2 integer, attempts bigint, users bigint, sum_accuracy float8,
    sum_score float8, hinted bigint, hints bigint, time_ms float8
) ON COMMIT DROP;
"""

_TAKE_QUEUE: LiteralString = """
WITH taken AS (DELETE FROM attempt_queue RETURNING *)
INSERT INTO delta
SELECT user_key, group_key, topic_key, is_correct, score, hints_used, time_spent_ms, attempted_at
FROM taken
"""

# The new attempts per (user, level, topic, group) and per (user, scope) of the per-user sums.
# `half` is the state half of the user: a column the planner has statistics for (it estimated
# mod(user_key, 2) = 0 at 0.5% of the rows and chose plans for a few hundred).
_DELTA_SUMS: LiteralString = """
CREATE TEMP TABLE d_user_topic ON COMMIT DROP AS
SELECT mod(d.user_key, {halves})::smallint AS half, d.user_key, t.level_key, d.topic_key,
       d.group_key, count(*) AS attempts, count(*) FILTER (WHERE d.is_correct) AS correct,
       sum(d.score) AS score, sum(d.hints_used)::bigint AS hints,
       count(*) FILTER (WHERE d.hints_used > 0) AS hinted,
       sum(d.time_spent_ms::float8) AS time_ms, max(d.attempted_at) AS last_at
FROM delta d JOIN topics t ON t.key = d.topic_key
GROUP BY d.user_key, t.level_key, d.topic_key, d.group_key;

CREATE TEMP TABLE d_user_scope ON COMMIT DROP AS
SELECT min(d.half) AS half, s.scope, s.key_1, s.key_2, d.user_key,
       sum(d.attempts)::bigint AS attempts, sum(d.correct)::bigint AS correct,
       sum(d.score) AS score, sum(d.hints)::bigint AS hints, sum(d.hinted)::bigint AS hinted,
       sum(d.time_ms) AS time_ms, max(d.last_at) AS last_at
FROM d_user_topic d
CROSS JOIN LATERAL (VALUES (0::smallint, 0, 0), (1::smallint, d.group_key, 0),
                           (2::smallint, d.level_key, 0), (3::smallint, d.group_key, d.level_key))
    AS s (scope, key_1, key_2)
GROUP BY s.scope, s.key_1, s.key_2, d.user_key;

ANALYZE d_user_topic, d_user_scope;
"""

# --- per half of the users: {user_topic} and {user_scope} are that half's state tables ---------

# What an upsert of new attempts' sums (`excluded`) into a row of running sums (`s`) sets.
_ADD_SUMS: LiteralString = """
    attempts = s.attempts + excluded.attempts, correct = s.correct + excluded.correct,
    score = s.score + excluded.score, hints = s.hints + excluded.hints,
    hinted = s.hinted + excluded.hinted, time_ms = s.time_ms + excluded.time_ms,
    last_at = greatest(s.last_at, excluded.last_at)"""

# The sums grow by the new attempts; each updated row comes back with its new (attempts,
# correct), and before = after - the new attempts' share, exactly (integers). So the
# contributions to users and accuracy sums (see the module docstring) cost no second lookup.
_ADD_TO_STATE: LiteralString = (
    """
WITH d AS (SELECT * FROM d_user_topic WHERE half = {half}),
updated AS (
    INSERT INTO {user_topic} AS s
    SELECT user_key, level_key, topic_key, group_key, attempts, correct, score, hints, hinted,
           time_ms, last_at
    FROM d
    ORDER BY user_key, level_key, topic_key, group_key
    ON CONFLICT (user_key, level_key, topic_key, group_key) DO UPDATE SET"""
    + _ADD_SUMS
    + """
    RETURNING s.user_key, s.level_key, s.topic_key, s.group_key, s.attempts, s.correct
)
INSERT INTO contributions
SELECT 'group_topic', u.group_key, u.topic_key, u.attempts - d.attempts, u.correct - d.correct,
       u.attempts, u.correct
FROM updated u JOIN d USING (user_key, level_key, topic_key, group_key);

WITH d AS (SELECT * FROM d_user_scope WHERE half = {half}),
updated AS (
    INSERT INTO {user_scope} AS s
    SELECT scope, key_1, key_2, user_key, attempts, correct, score, hints, hinted, time_ms,
           last_at
    FROM d
    ORDER BY user_key, scope, key_1, key_2
    ON CONFLICT (user_key, scope, key_1, key_2) DO UPDATE SET"""
    + _ADD_SUMS
    + """
    RETURNING s.user_key, s.scope, s.key_1, s.key_2, s.attempts, s.correct
)
INSERT INTO contributions
SELECT CASE u.scope WHEN 1 THEN 'group' WHEN 2 THEN 'level' ELSE 'group_level' END,
       u.key_1, u.key_2, u.attempts - d.attempts, u.correct - d.correct, u.attempts, u.correct
FROM updated u JOIN d USING (user_key, scope, key_1, key_2)
WHERE u.scope > 0;

-- A topic counts a user's attempts in every group: after the update, from all the user's rows.
INSERT INTO contributions
SELECT 'topic', d.topic_key, 0, o.n - d.n, o.c - d.c, o.n, o.c
FROM (
    SELECT user_key, level_key, topic_key, sum(attempts)::bigint AS n,
           sum(correct)::bigint AS c
    FROM d_user_topic WHERE half = {half}
    GROUP BY user_key, level_key, topic_key
) d
CROSS JOIN LATERAL (
    SELECT sum(attempts)::bigint AS n, sum(correct)::bigint AS c
    FROM {user_topic} o
    WHERE o.user_key = d.user_key AND o.level_key = d.level_key AND o.topic_key = d.topic_key
) o;
"""
)

# The touched students' documents. In `levels` and `topics`, only the run of entries of the
# touched levels (from the lowest to the highest; usually one level: 1 of ~20 level entries and
# ~5 of ~90 topic entries) is rebuilt from the sums, as the full tick builds entries
# (aggregate._PROGRESS); the text around it is kept as stored. The run is found by the levels'
# markers (see aggregate.LEVEL_INFO): it starts at the first entry of the first level at or
# after the lowest touched one that the stored document has, and ends before the first entry of
# the first later level it has. A document that does not hold a marker the sums say it holds (it
# cannot happen while both are written only by ticks) is rebuilt whole rather than spliced
# wrongly.
_SPANS: LiteralString = """
INSERT INTO spans
WITH mine AS (
    SELECT d.user_key, min(l.level_ord) AS lo, max(l.level_ord) AS hi,
           array_agg(d.key_1) AS levels_touched, array_agg(d.attempts) AS new_attempts
    FROM d_user_scope d JOIN level_info l ON l.level_key = d.key_1
    WHERE d.half = {half} AND d.scope = 2
    GROUP BY d.user_key
),
per_user AS (
    SELECT m.user_key, u.id AS user_id, m.lo, m.hi, lv.*
    FROM mine m
    JOIN users u ON u.key = m.user_key
    -- LATERAL: one index range per student (a join read every level row of the half).
    CROSS JOIN LATERAL (
        SELECT string_agg(reporting_state.progress_entry(l.head, s.attempts, s.correct, s.score,
                                                         s.hints, s.time_ms),
                          ',' ORDER BY l.level_ord)
                   FILTER (WHERE l.level_ord BETWEEN m.lo AND m.hi) AS levels_run,
               -- the run: from the first stored level at or after lo to before the first after hi
               min(l.level_ord) FILTER (WHERE s.stored AND l.level_ord >= m.lo) AS run_ord,
               min(l.level_ord) FILTER (WHERE s.stored AND l.level_ord > m.hi) AS next_ord,
               min(reporting_state.progress_entry('{{', s.attempts, s.correct, s.score, s.hints,
                                                  s.time_ms)) FILTER (WHERE s.scope = 0)
                   AS totals,
               max(s.last_at) FILTER (WHERE s.scope = 0) AS last_at
        FROM (
            SELECT s.*, s.attempts > coalesce(
                       m.new_attempts[array_position(m.levels_touched, s.key_1)], 0) AS stored
            FROM {user_scope} s
            WHERE s.user_key = m.user_key AND s.scope IN (0, 2) AND s.key_2 = 0
        ) s
        LEFT JOIN level_info l ON s.scope = 2 AND l.level_key = s.key_1
    ) lv
),
found AS (
    -- Byte positions in the stored texts (character positions cost a walk over UTF-8 per
    -- call); the closing bracket's when there is no such level. OFFSET 0 keeps each document
    -- read and searched once. A `levels` entry begins with its level's head then "attempts".
    SELECT p.*, d.*,
           CASE WHEN p.run_ord IS NULL THEN octet_length(d.topics)
                ELSE position(convert_to(r.marker, 'UTF8') IN d.topics) END AS t_start,
           CASE WHEN p.next_ord IS NULL THEN octet_length(d.topics)
                ELSE position(convert_to(n.marker, 'UTF8') IN d.topics) END AS t_end,
           CASE WHEN p.run_ord IS NULL THEN octet_length(d.levels)
                ELSE position(convert_to(r.head || '"attempts":', 'UTF8') IN d.levels) END
               AS l_start,
           CASE WHEN p.next_ord IS NULL THEN octet_length(d.levels)
                ELSE position(convert_to(n.head || '"attempts":', 'UTF8') IN d.levels) END
               AS l_end
    FROM per_user p
    LEFT JOIN level_info r ON r.level_ord = p.run_ord
    LEFT JOIN level_info n ON n.level_ord = p.next_ord
    LEFT JOIN LATERAL (
        SELECT convert_to(ps.topics::text, 'UTF8') AS topics,
               convert_to(ps.levels::text, 'UTF8') AS levels
        FROM progress_summary ps WHERE ps.user_id = p.user_id
        OFFSET 0
    ) d ON true
    OFFSET 0
)
SELECT {half}, user_key, user_id, totals, last_at, whole,
       CASE WHEN whole THEN 1 ELSE lo END, CASE WHEN whole THEN 2147483647 ELSE hi END,
       levels_run,
       -- the entries before the run: bytes 2.. (after '[', before the run's ',')
       CASE WHEN whole THEN 0 WHEN run_ord IS NULL THEN octet_length(topics) - 2
            ELSE greatest(t_start - 3, 0) END,
       -- the entries after it: from the next level's first entry to before ']'
       CASE WHEN NOT whole AND next_ord IS NOT NULL THEN t_end END,
       CASE WHEN whole THEN 0 WHEN run_ord IS NULL THEN octet_length(levels) - 2
            ELSE greatest(l_start - 3, 0) END,
       CASE WHEN NOT whole AND next_ord IS NOT NULL THEN l_end END
FROM (
    SELECT *, coalesce(t_start = 0 OR t_end = 0 OR t_end < t_start
                       OR l_start = 0 OR l_end = 0 OR l_end < l_start, true) AS whole
    FROM found
) f
"""

_PROGRESS: LiteralString = """
WITH per_topic AS MATERIALIZED (
    -- The touched levels' sums per topic: a few index ranges per student.
    SELECT sp.user_key, t.*
    FROM spans sp
    CROSS JOIN LATERAL (
        SELECT s.topic_key, sum(s.attempts)::bigint AS attempts,
               sum(s.correct)::bigint AS correct, sum(s.score) AS score,
               sum(s.hints)::bigint AS hints, sum(s.time_ms) AS time_ms
        FROM level_info l
        JOIN {user_topic} s ON s.user_key = sp.user_key AND s.level_key = l.level_key
        WHERE l.level_ord BETWEEN sp.lo AND sp.hi
        GROUP BY s.topic_key
    ) t
    WHERE sp.half = {half}
),
run AS (
    -- MATERIALIZED above: else the topics are hashed again for every student.
    SELECT t.user_key,
           string_agg(reporting_state.progress_entry(i.head, t.attempts, t.correct, t.score,
                                                     t.hints, t.time_ms),
                      ',' ORDER BY i.topic_ord) AS entries
    FROM per_topic t JOIN topic_info i ON i.topic_key = t.topic_key
    GROUP BY t.user_key
)
INSERT INTO progress_summary AS p (user_id, totals, levels, topics, last_activity_at, computed_at)
SELECT sp.user_id, sp.totals::json,
       CASE WHEN sp.whole THEN (
           SELECT '[' || string_agg(reporting_state.progress_entry(l.head, s.attempts, s.correct,
                                                                   s.score, s.hints, s.time_ms),
                                    ',' ORDER BY l.level_ord) || ']'
           FROM {user_scope} s JOIN level_info l ON l.level_key = s.key_1
           WHERE s.user_key = sp.user_key AND s.scope = 2 AND s.key_2 = 0)
       ELSE '[' || concat_ws(',', d.l_before, sp.levels_run, d.l_after) || ']' END::json,
       ('[' || concat_ws(',', d.t_before, r.entries, d.t_after) || ']')::json, sp.last_at, now()
FROM spans sp
JOIN run r ON r.user_key = sp.user_key
LEFT JOIN LATERAL (
    SELECT nullif(convert_from(substring(x.topics FROM 2 FOR sp.t_before), 'UTF8'), '')
               AS t_before,
           convert_from(substring(x.topics FROM sp.t_after
                                  FOR octet_length(x.topics) - sp.t_after), 'UTF8') AS t_after,
           nullif(convert_from(substring(x.levels FROM 2 FOR sp.l_before), 'UTF8'), '')
               AS l_before,
           convert_from(substring(x.levels FROM sp.l_after
                                  FOR octet_length(x.levels) - sp.l_after), 'UTF8') AS l_after
    FROM (
        SELECT convert_to(ps.topics::text, 'UTF8') AS topics,
               convert_to(ps.levels::text, 'UTF8') AS levels
        FROM progress_summary ps WHERE ps.user_id = sp.user_id
        OFFSET 0
    ) x
) d ON true
WHERE sp.half = {half}
ON CONFLICT (user_id) DO UPDATE SET
    totals = excluded.totals, levels = excluded.levels, topics = excluded.topics,
    last_activity_at = excluded.last_activity_at, computed_at = excluded.computed_at
"""

# --- scopes -------------------------------------------------------------------------------------

_SCOPE_SUMS: LiteralString = """
WITH users_and_accuracy AS (
    SELECT type, key_1, key_2, count(*) FILTER (WHERE old_n = 0) AS users,
           sum(new_c::float8 / new_n
               - CASE WHEN old_n > 0 THEN old_c::float8 / old_n ELSE 0 END) AS sum_accuracy
    FROM contributions
    GROUP BY type, key_1, key_2
),
additive AS (
    SELECT s.type, s.key_1, s.key_2, sum(d.attempts)::bigint AS attempts,
           sum(d.score) AS sum_score, sum(d.hinted)::bigint AS hinted,
           sum(d.hints)::bigint AS hints, sum(d.time_ms) AS time_ms
    FROM d_user_topic d
    CROSS JOIN LATERAL (VALUES ('group', d.group_key, 0), ('level', d.level_key, 0),
                               ('topic', d.topic_key, 0), ('group_level', d.group_key, d.level_key),
                               ('group_topic', d.group_key, d.topic_key))
        AS s (type, key_1, key_2)
    GROUP BY s.type, s.key_1, s.key_2
),
updated AS (
    INSERT INTO reporting_state.scope_sums AS s
    SELECT a.type, a.key_1, a.key_2, a.attempts, u.users, u.sum_accuracy, a.sum_score, a.hinted,
           a.hints, a.time_ms
    FROM additive a JOIN users_and_accuracy u USING (type, key_1, key_2)
    ON CONFLICT (type, key_1, key_2) DO UPDATE SET
        attempts = s.attempts + excluded.attempts, users = s.users + excluded.users,
        sum_accuracy = s.sum_accuracy + excluded.sum_accuracy,
        sum_score = s.sum_score + excluded.sum_score, hinted = s.hinted + excluded.hinted,
        hints = s.hints + excluded.hints, time_ms = s.time_ms + excluded.time_ms
    RETURNING s.*
)
INSERT INTO changed_scopes SELECT * FROM updated
"""

_STATS: LiteralString = """
INSERT INTO materialized_stats AS m (type, entity_id, group_id, metrics, computed_at)
SELECT c.type,
       CASE c.type WHEN 'group' THEN g.id WHEN 'level' THEN l.id WHEN 'topic' THEN t.id
                   WHEN 'group_level' THEN g.id || ':' || l.id
                   ELSE g.id || ':' || t.id END,
       g.id,
       reporting_state.kpi(c.attempts, c.users, c.sum_accuracy, c.sum_score, c.hinted, c.hints,
                           c.time_ms),
       now()
FROM changed_scopes c
LEFT JOIN groups g
    ON g.key = CASE WHEN c.type IN ('group', 'group_level', 'group_topic') THEN c.key_1 END
LEFT JOIN levels l
    ON l.key = CASE c.type WHEN 'level' THEN c.key_1 WHEN 'group_level' THEN c.key_2 END
LEFT JOIN topics t
    ON t.key = CASE c.type WHEN 'topic' THEN c.key_1 WHEN 'group_topic' THEN c.key_2 END
ORDER BY 1, 2
ON CONFLICT (type, entity_id) DO UPDATE SET
    metrics = excluded.metrics, computed_at = excluded.computed_at
"""

# --- leaderboards -------------------------------------------------------------------------------

# scope 0 global, 1 group, 2 level (as in the per-user sums).
_BOARDS_DUE: LiteralString = """
CREATE TEMP TABLE boards_due ON COMMIT DROP AS
SELECT 0::smallint AS scope, 0 AS key_1 FROM (SELECT 1 FROM d_user_topic LIMIT 1) any_attempt
UNION
SELECT 1, group_key FROM d_user_topic
UNION
SELECT 2, level_key FROM d_user_topic
UNION
SELECT CASE b.scope WHEN 'global' THEN 0 WHEN 'group' THEN 1 ELSE 2 END::smallint,
       CASE b.scope WHEN 'global' THEN 0 WHEN 'group' THEN g.key ELSE l.key END
FROM leaderboards b
LEFT JOIN groups g ON b.scope = 'group' AND g.id = b.scope_id
LEFT JOIN levels l ON b.scope = 'level' AND l.id = b.scope_id
WHERE b.computed_at < now() - %(refresh_age)s::interval
  AND (b.scope = 'global' OR g.key IS NOT NULL OR l.key IS NOT NULL)
"""

# Per board and half: the N best scores, through the board index; every user at or above the
# N-th best of both halves is a candidate, so rank() over the candidates is the true rank. Less
# the slack of aggregate.SCORE_RANK_KEY: a total that ties the N-th once compared to 6 decimal
# places may lie a float's last bits below it. The columns are those BOARD_RANKINGS reads.
_BOARD_CANDIDATES: LiteralString = """
CREATE TEMP TABLE candidates ON COMMIT DROP AS
WITH threshold AS (
    SELECT b.scope, b.key_1, (
        SELECT min(score) FROM (
            SELECT score FROM (
                {top_scores}
            ) both_halves ORDER BY score DESC LIMIT %(size)s
        ) top
    ) AS min_score
    FROM boards_due b
)
{candidates}
"""

_TOP_SCORES: LiteralString = """
(SELECT score FROM {user_scope} s
 WHERE s.scope < 3 AND s.scope = b.scope AND s.key_1 = b.key_1 AND s.key_2 = 0
 ORDER BY s.score DESC LIMIT %(size)s)
"""

_CANDIDATES_OF_HALF: LiteralString = """
SELECT t.scope, t.key_1 AS scope_key, u.id AS user_id, u.display_name, s.score,
       s.correct::float8 / s.attempts AS accuracy, s.attempts
FROM threshold t
JOIN {user_scope} s
    ON s.scope < 3 AND s.scope = t.scope AND s.key_1 = t.key_1 AND s.key_2 = 0
   AND s.score >= t.min_score - %(score_slack)s
JOIN users u ON u.key = s.user_key
"""

_BOARDS: LiteralString = (
    "WITH"
    + aggregate.BOARD_RANKINGS
    + """
INSERT INTO leaderboards AS b (scope, scope_id, rankings, computed_at, expires_at)
SELECT CASE d.scope WHEN 0 THEN 'global' WHEN 1 THEN 'group' ELSE 'level' END,
       CASE d.scope WHEN 0 THEN 'global' WHEN 1 THEN g.id ELSE l.id END,
       coalesce(r.rankings, '[]'), now(), now() + make_interval(hours => %(ttl_hours)s)
FROM boards_due d
LEFT JOIN board r ON r.scope = d.scope AND r.scope_key = d.key_1
LEFT JOIN groups g ON d.scope = 1 AND g.key = d.key_1
LEFT JOIN levels l ON d.scope = 2 AND l.key = d.key_1
ON CONFLICT (scope, scope_id) DO UPDATE SET
    rankings = excluded.rankings, computed_at = excluded.computed_at,
    expires_at = excluded.expires_at
"""
)


def tick(conn: psycopg.Connection, settings: Settings) -> TickResult | None:
    """Fold the queued attempts in; None (nothing done) when the running sums are not valid,
    and the caller should run a full tick instead. An error rolls everything back (the queue
    included), records the tick as failed and is re-raised.

    `conn` must have owner rights and no open transaction; the caller holds the worker lock.
    """
    durations: dict[str, float] = {}
    try:
        with conn.transaction():
            if not state.is_valid(conn, settings.worker.leaderboard_size):
                return None
            return _fold(conn, settings, durations)
    except BaseException as error:
        ticks.record_failure(conn, error, mode="incremental")
        raise


def _fold(conn: psycopg.Connection, settings: Settings, durations: dict[str, float]) -> TickResult:
    aggregate.tune(conn)
    aggregate.prefer_lz4(conn)
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true)",
        (f"{int(settings.worker.lock_timeout_secs * 1000)}ms",),
    )
    step = partial(ticks.timed, durations)
    with step("queue"):
        conn.execute(_TEMP_TABLES)
        taken = conn.execute(_TAKE_QUEUE).rowcount
    with step("sums"):
        conn.execute(sql.SQL(_DELTA_SUMS).format(halves=sql.Literal(state.HALVES)))
        conn.execute("CREATE TEMP TABLE level_info ON COMMIT DROP AS" + aggregate.LEVEL_INFO)
        conn.execute("CREATE TEMP TABLE topic_info ON COMMIT DROP AS" + aggregate.TOPIC_INFO)
        # Per-student lookups below read a few entries each: indexes, not a hash of all 500.
        conn.execute("CREATE UNIQUE INDEX ON topic_info (topic_key)")
        conn.execute("CREATE UNIQUE INDEX ON level_info (level_key)")
        conn.execute("ANALYZE level_info, topic_info")
        for half in range(state.HALVES):
            conn.execute(_per_half(_ADD_TO_STATE, half))
        conn.execute(_SCOPE_SUMS)
    with step("stats"):
        conn.execute(_STATS)
    with step("leaderboards"):
        conn.execute(_BOARDS_DUE, {"refresh_age": BOARD_REFRESH_AGE})
        params = {
            "size": settings.worker.leaderboard_size,
            "ttl_hours": aggregate.LEADERBOARD_TTL_HOURS,
            "score_slack": aggregate.SCORE_RANK_SLACK,
        }
        conn.execute(_board_candidates(), params)
        boards = conn.execute(_BOARDS, params).rowcount
    with step("progress"):
        for half in range(state.HALVES):
            conn.execute(_per_half(_SPANS, half))
        conn.execute("ANALYZE spans")
        progress = sum(
            conn.execute(_per_half(_PROGRESS, half)).rowcount for half in range(state.HALVES)
        )
    row = conn.execute(
        "SELECT now(), (SELECT count(DISTINCT user_key) FROM d_user_topic),"
        # The groups whose page changed: new attempts there, or their board refreshed.
        " array(SELECT g.id FROM groups g"
        "       WHERE g.key IN (SELECT group_key FROM d_user_topic"
        "                       UNION SELECT key_1 FROM boards_due WHERE scope = 1)"
        "       ORDER BY g.id),"
        " (SELECT json_object_agg(type, n) FROM ("
        "     SELECT type, count(*) AS n FROM changed_scopes GROUP BY type) c)"
    ).fetchone()
    assert row is not None
    computed_at, users, group_ids, stats_by_type = row
    assert isinstance(computed_at, datetime)
    result = TickResult(
        tick_id=0,
        computed_at=computed_at,
        attempts=taken,
        users_with_attempts=int(users),
        stats={str(k): int(v) for k, v in (stats_by_type or {}).items()},
        leaderboards=boards,
        progress_summaries=progress,
        durations=durations,
        mode="incremental",
    )
    if taken == 0 and boards == 0:
        # Nothing changed: no tick row, no notification (live ticks may come every second).
        return result
    tick_id = ticks.record_incremental(conn, result)
    _notify(conn, tick_id, list(group_ids))
    return replace(result, tick_id=tick_id)


def _per_half(template: LiteralString, half: int) -> sql.Composed:
    tables = state.state_tables(half)
    return sql.SQL(template).format(
        user_topic=sql.Identifier(state.SCHEMA, tables.user_topic),
        user_scope=sql.Identifier(state.SCHEMA, tables.user_scope),
        half=sql.Literal(half),
    )


def _board_candidates() -> sql.Composed:
    halves = [
        sql.Identifier(state.SCHEMA, state.state_tables(h).user_scope) for h in range(state.HALVES)
    ]
    return sql.SQL(_BOARD_CANDIDATES).format(
        top_scores=sql.SQL(" UNION ALL ").join(
            sql.SQL(_TOP_SCORES).format(user_scope=table) for table in halves
        ),
        candidates=sql.SQL(" UNION ALL ").join(
            sql.SQL(_CANDIDATES_OF_HALF).format(user_scope=table) for table in halves
        ),
    )


def _notify(conn: psycopg.Connection, tick_id: int, group_ids: list[str] | None) -> None:
    payload = change_payload(group_ids, tick_id=tick_id, mode="incremental")
    conn.execute("SELECT pg_notify(%s, %s)", (channels.STATS_CHANGED, payload))
