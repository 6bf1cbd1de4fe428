"""One analytics tick: every derived record recomputed inside PostgreSQL, then swapped in at once.

`tick(conn, settings)` rewrites `materialized_stats`, `leaderboards` and `progress_summary` from
all attempts (CONTRACT §2). Python only orchestrates; every row is computed by set-based SQL.

How a tick runs, and why (measured at 10M attempts on 2 cores; see bench/bench_tick.py). The
synthetic school has ~9M distinct (user, topic) pairs for 10M attempts, so nearly every step
handles ~10M rows and ~11M progress entries: the cost is in the passes, not the scan.

0. Setup: the tick's staging schemas, the directory's order frozen as integer ordinals.
1. Per-user phase, split over two sessions by `user_key mod 2` (a helper connection takes the
   second half; both import one exported snapshot, so the tick sees attempts as of one instant).
   Each half makes ONE sorted pass over its attempts: a rollup chain within each user yields the
   (user, level, topic), (user, level) and (user) rows from a single sort. The group is not in
   that key: most users have all their attempts in one group (then min = max group is it), and
   a second small pass splits the rest by group. From those rows: partial KPI sums of every
   scope over the half's users, the half's leaderboard candidates, and its users'
   progress_summary documents (built while the rows are still in (user, ordinal) order).
2. Scope phase: the halves' partial sums are added up, both sessions again (group_topic, ~1M
   rows, in two key ranges; the other scopes and the leaderboards with the second range). A
   mean over users merges exactly as (sum of the halves' sums) / (sum of their user counts). Leaderboards merge the halves' candidates: a user
   with a strictly greater score than any final top-N member precedes it in the order, so is a
   candidate of its half too; ranks computed over the merged candidates are the true ranks.
3. Swap: one transaction deletes the previous rows and inserts the staged ones (MVCC: readers
   keep seeing the previous tick until the commit and are never blocked), marks the tick a
   success and sends `NOTIFY stats_changed`. Only copying remains for it; every value was
   computed (and every document compressed) before.

Staging lives in UNLOGGED tables in three schemas of the tick's own (`reporting_tick_{id}`,
`…_0`, `…_1`; a search_path picks the half), dropped when the tick ends. A worker that was killed
leaves them behind; `discard_abandoned` (called by the worker loop under its lock) drops them.

Choices the contract leaves open:
- Every user in the directory gets a progress_summary; one without attempts gets zero totals,
  empty `levels`/`topics` and a null `last_activity_at` (so "no attempts yet" is stated, with the
  tick's `computed_at`, rather than left to a missing row).
- `levels[]` are ordered by level position, then level id; `topics[]` by their level's position
  and id, then topic id. Every entry carries `level_id`; topic entries also `topic_id`.
- Every group, level and topic of the directory gets a materialized_stats row and (groups and
  levels) a leaderboard, empty when nobody has attempts there; the global board always exists.
- Attempts are taken as stored: ingestion validates their references. Only users present in the
  directory get a summary and a place on a board.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from reporting.db import channels
from reporting.db.priority import lower_backend_priority
from reporting.settings import Settings
from reporting.stats import state, ticks
from reporting.stats.cache import change_payload
from reporting.stats.state import HALVES, state_tables
from reporting.stats.ticks import TickResult

log = logging.getLogger(__name__)

STAGE_PREFIX = "reporting_tick_"
LEADERBOARD_TTL_HOURS = 24

# The per-user phase sorts and hashes ~5M rows per half: at 128MB its aggregates spilled to disk
# (measured 3.9 s instead of ~2 s for one of them). Transaction-local, and only for these
# sessions: a large global work_mem made the planner pick slower plans elsewhere (NOTES.md).
_PER_USER_WORK_MEM = "512MB"
# The scope phase merges ~2M rows of partial sums into ~1M and sorts half of them per session:
# at 128MB that sort spilled to disk (140 MB).
_SCOPE_WORK_MEM = "512MB"
_SESSION_SETTINGS: Mapping[str, str] = {
    "work_mem": "128MB",
    # Both cores are already busy with the two halves; parallel workers would only contend.
    "max_parallel_workers_per_gather": "0",
    # JSON numbers are written with float8out: 1 = shortest text that reads back exactly.
    "extra_float_digits": "1",
    # Measured no faster on PostgreSQL 15 (the embedded 18 has no JIT); it only adds compile time.
    "jit": "off",
    # Scans of staging return rows in the order they were written (a big table's scan may
    # otherwise start wherever a concurrent scan is): later sorts then find their input
    # presorted, and the swap inserts in index order. Only speed depends on it, never results.
    "synchronize_seqscans": "off",
}

T = TypeVar("T")
U = TypeVar("U")


# --- staging ----------------------------------------------------------------------------------

# Shared by the halves and the scope phase. The directory's order is frozen once per tick as small
# integer ordinals: every later step keys on them, and the per-user pass sorts by them, so its
# output is already in the order of the progress documents' arrays.
#
# A tick at 10M attempts writes ~11M progress entries, so how they become JSON matters. Text
# concatenation, cast to json once per document, measured cheapest: json_build_object and
# json_agg over composite rows both look up each value's type per call (2x, 1.3x the time).
# progress_entry is a single-expression SQL function, which the planner inlines. Ingestion
# refuses NaN and infinite scores, so every number prints as a JSON number.
# The order of the progress documents' arrays; also used by incremental ticks (temp tables there).
# A topic entry starts with its level's `marker` ('{"level_id":…,"topic_id":'): JSON escapes every
# quote inside a string, so that text occurs in a document only where an entry of that level
# begins, and an incremental tick finds a level's run of entries with strpos (incremental.py).
LEVEL_INFO: LiteralString = """
SELECT key AS level_key, id AS level_id,
       row_number() OVER (ORDER BY position, id)::int AS level_ord,
       concat('{"level_id":', to_json(id), ',') AS head,
       concat('{"level_id":', to_json(id), ',"topic_id":') AS marker
FROM levels
"""

TOPIC_INFO: LiteralString = """
SELECT t.key AS topic_key, t.id AS topic_id, l.level_key, l.level_ord,
       row_number() OVER (ORDER BY l.level_ord, t.id)::int AS topic_ord,
       concat(l.marker, to_json(t.id), ',') AS head
FROM topics t JOIN level_info l ON l.level_key = t.level_key
"""

_SETUP = (
    "CREATE UNLOGGED TABLE level_info AS" + LEVEL_INFO + ";\n"
    "CREATE UNLOGGED TABLE topic_info AS" + TOPIC_INFO + ";\n"
    """
-- The groups in two parts that are contiguous ranges of the group_topic keys ("{group}:{topic}"),
-- so the scope phase can build the two parts in parallel and the swap still insert in key order.
-- Part 1 holds 30% of the groups: its session also merges the running sums, which takes about as
-- long as 40% of the group_topic rows (with equal parts, the sessions took 8.1 s and 4.9 s).
CREATE UNLOGGED TABLE group_info AS
SELECT key AS group_key, id AS group_id,
       CASE WHEN row_number() OVER (ORDER BY id || ':') <= 0.3 * count(*) OVER () THEN 1 ELSE 2
       END AS part
FROM groups;

ANALYZE level_info, topic_info, group_info;
"""
)

_ZERO_TOTALS = (
    '{"attempts":0,"correct":0,"accuracy":0,"score":0,"hints_used":0,"avg_time_seconds":0}'
)

# --- phase 1: one half of the users, in its own session ------------------------------------------

# The one big pass: this half's attempts, sorted once by (user, level, topic); ROLLUP makes it
# emit the (user, level) and (user) rows from the same sort. The group is not in the key: ~90% of
# users have all their attempts in one group, for whom group_min = group_max is that group. With
# the group in the key the pass wrote twice the rows (~10M per half) and needed another
# aggregation for (user, group, level).
_ROLLUP = """
CREATE UNLOGGED TABLE rollup AS
SELECT grouping(i.level_ord, i.topic_ord)::smallint AS grain,
       -- 0: (user, level, topic)  1: (user, level)  3: (user)
       a.user_key, i.level_ord, i.topic_ord,
       min(a.group_key) AS group_min, max(a.group_key) AS group_max,
       -- Counts as integer: every later sum over them adds int4 into int8 rather than int8 in
       -- numeric's wider state (the group_topic sums took 3.4 s instead of 5 s per half), and the
       -- rows are 15%% smaller. hints stay bigint: one attempt may hold up to 2^31 - 1 of them.
       count(*)::int AS attempts, (count(*) FILTER (WHERE a.is_correct))::int AS correct,
       sum(a.score) AS score, sum(a.hints_used) AS hints,
       (count(*) FILTER (WHERE a.hints_used > 0))::int AS hinted,  -- attempts with hints
       sum(a.time_spent_ms::float8) AS time_ms,  -- exact: integers below 2^53
       max(a.attempted_at) AS last_at
FROM attempts a JOIN topic_info i ON i.topic_key = a.topic_key
WHERE mod(a.user_key, %(halves)s) = %(half)s
GROUP BY a.user_key, ROLLUP (i.level_ord, i.topic_ord)
"""

_MULTI_USERS = """
CREATE UNLOGGED TABLE multi_users AS
SELECT user_key FROM rollup WHERE grain = 3 AND group_min <> group_max
"""

# The same grains per group, for the users with attempts in several groups only.
_MULTI = """
CREATE UNLOGGED TABLE multi AS
SELECT grouping(i.level_ord, i.topic_ord)::smallint AS grain,
       a.user_key, a.group_key, i.level_ord, i.topic_ord,
       count(*)::int AS attempts, (count(*) FILTER (WHERE a.is_correct))::int AS correct,
       sum(a.score) AS score, sum(a.hints_used) AS hints,
       (count(*) FILTER (WHERE a.hints_used > 0))::int AS hinted,
       sum(a.time_spent_ms::float8) AS time_ms,
       max(a.attempted_at) AS last_at
FROM attempts a JOIN topic_info i ON i.topic_key = a.topic_key
WHERE a.user_key IN (SELECT user_key FROM multi_users)
GROUP BY a.user_key, a.group_key, ROLLUP (i.level_ord, i.topic_ord)
"""

# Per (user, group, …) at every grain: from the rollup for one-group users, else from `multi`.
_USER_GROUP = """
CREATE VIEW user_group AS
SELECT grain, user_key, group_min AS group_key, level_ord, topic_ord,
       attempts, correct, score, hints, hinted, time_ms, last_at
FROM rollup r
WHERE NOT EXISTS (SELECT 1 FROM multi_users m WHERE m.user_key = r.user_key)
UNION ALL
SELECT grain, user_key, group_key, level_ord, topic_ord, attempts, correct, score, hints, hinted,
       time_ms, last_at
FROM multi
"""

# Partial KPI sums of every scope over this half's users; each input row is one user in the scope.
# One hash aggregation per source, keyed by grain: with the coarser grains' ordinals NULL, the
# key (grain, group, level, topic) makes group_topic, group_level and group rows of the grains
# 0, 1 and 3 of user_group, and (grain, level, topic) the topic, level and school rows of the
# rollup (six scans, one per scope, took 6.5 s per half instead of 5.5).
_PARTIALS = """
CREATE UNLOGGED TABLE partials AS
SELECT CASE grain WHEN 0 THEN 'group_topic' WHEN 1 THEN 'group_level' ELSE 'group' END AS type,
       group_key AS key_1, CASE grain WHEN 0 THEN topic_ord WHEN 1 THEN level_ord END AS key_2,
       sum(attempts)::bigint AS attempts, count(*) AS users,
       sum(correct::float8 / attempts) AS sum_accuracy, sum(score) AS sum_score,
       sum(hinted)::bigint AS hinted, sum(hints)::bigint AS hints, sum(time_ms) AS time_ms
FROM user_group GROUP BY grain, group_key, level_ord, topic_ord
UNION ALL
SELECT CASE grain WHEN 0 THEN 'topic' WHEN 1 THEN 'level' ELSE 'school' END,
       CASE grain WHEN 0 THEN topic_ord WHEN 1 THEN level_ord ELSE 0 END, NULL,
       sum(attempts)::bigint, count(*), sum(correct::float8 / attempts), sum(score),
       sum(hinted)::bigint, sum(hints)::bigint, sum(time_ms)
FROM rollup GROUP BY grain, level_ord, topic_ord
"""

# How boards compare scores. A score is a float sum of decimal scores, and the same total added
# in another order differs in its last bits (0.1 + 0.2 + 0.3 > 0.3 + 0.2 + 0.1 = 0.6): the ranks
# of equal totals depended on the order of the additions, and a live board could disagree with
# a full recompute. Compared to 6 decimal places (far below any score's own precision, far above
# the noise of the additions), equal totals tie, as CONTRACT §2 means. The score shown is the sum.
SCORE_RANK_KEY: LiteralString = "round(score * 1e6)"
# Two scores whose keys are equal differ by less than this (the incremental tick's threshold).
SCORE_RANK_SLACK = 1e-6

# Candidates for this half's boards (scope 0: global, 1: group, 2: level). rank() over (score,
# accuracy) <= N keeps everyone who can reach the top N whatever the final tie-break on user id,
# and sorts numbers only; the user ids join the few survivors.
_CANDIDATES = (
    """
CREATE UNLOGGED TABLE candidates AS
SELECT p.scope, p.scope_key, u.id AS user_id, u.display_name, p.score, p.accuracy, p.attempts
FROM (
    SELECT *, rank() OVER (PARTITION BY scope, scope_key
                           ORDER BY """
    + SCORE_RANK_KEY
    + """ DESC, accuracy DESC) AS prerank
    FROM (
        SELECT 0 AS scope, 0 AS scope_key, user_key, attempts, score,
               correct::float8 / attempts AS accuracy
        FROM rollup WHERE grain = 3
        UNION ALL
        SELECT 1, group_key, user_key, attempts, score, correct::float8 / attempts
        FROM user_group WHERE grain = 3
        UNION ALL
        SELECT 2, level_ord, user_key, attempts, score, correct::float8 / attempts
        FROM rollup WHERE grain = 1
    ) per_scope
) p
JOIN users u ON u.key = p.user_key
WHERE p.prerank <= %(size)s
"""
)

# The progress_summary documents of this half's users (all of them: see the module docstring).
# The rollup rows arrive already ordered by (user, ordinal), so the sorts below find their input
# presorted.
_PROGRESS = """
CREATE UNLOGGED TABLE progress AS
SELECT u.id AS user_id,
       -- concat() reads NULL as '': test for "no attempts" rather than coalescing the entry
       CASE WHEN t.user_key IS NULL THEN %(zero_totals)s
            ELSE reporting_state.progress_entry('{', t.attempts, t.correct, t.score, t.hints, t.time_ms)
       END::json AS totals,
       coalesce(l.entries, '[]')::json AS levels,
       coalesce(tp.entries, '[]')::json AS topics,
       t.last_at AS last_activity_at
FROM users u
LEFT JOIN rollup t ON t.user_key = u.key AND t.grain = 3
LEFT JOIN (
    SELECT r.user_key,
           '[' || string_agg(reporting_state.progress_entry(i.head, r.attempts, r.correct, r.score, r.hints,
                                            r.time_ms), ',' ORDER BY r.level_ord) || ']' AS entries
    FROM rollup r JOIN level_info i ON i.level_ord = r.level_ord
    WHERE r.grain = 1
    GROUP BY r.user_key
) l ON l.user_key = u.key
LEFT JOIN (
    SELECT r.user_key,
           '[' || string_agg(reporting_state.progress_entry(i.head, r.attempts, r.correct, r.score, r.hints,
                                            r.time_ms), ',' ORDER BY r.topic_ord) || ']' AS entries
    FROM rollup r JOIN topic_info i ON i.topic_ord = r.topic_ord
    WHERE r.grain = 0
    GROUP BY r.user_key
) tp ON tp.user_key = u.key
WHERE mod(u.key, %(halves)s) = %(half)s
"""


@dataclass(frozen=True, slots=True)
class _Step:
    name: str  # also the table it creates
    statement: LiteralString
    analyze: bool = True  # later steps of the half read the table: give the planner statistics
    work_mem: str | None = None


_HALF_STEPS = (
    _Step("rollup", _ROLLUP),
    _Step("multi_users", _MULTI_USERS),
    _Step("multi", _MULTI),
    _Step("user_group", _USER_GROUP, analyze=False),
    _Step("partials", _PARTIALS),
    _Step("candidates", _CANDIDATES),
    # The topics sort (~4.5M presorted rows) spilled to disk at 512MB: 0.8 s more per half.
    _Step("progress", _PROGRESS, analyze=False, work_mem="1GB"),
)

# The running sums the incremental ticks start from (stats/incremental.py), keyed by the stable
# directory keys rather than this tick's ordinals. Taken from rows the half computed anyway; the
# swap moves the tables into schema reporting_state whole, so nothing is copied twice.
# Per (user, group, topic): what a new attempt adds to, and what a touched user's progress
# document and group_topic/topic contributions are rebuilt from. Keyed by level after the user:
# an incremental tick rebuilds only the touched levels' entries of a document. Room is left on
# each page, so that adding to a row writes its next version beside it and touches no index
# (a HOT update: no key column changes).
_STATE_USER_TOPIC = """
CREATE UNLOGGED TABLE {table} WITH (fillfactor = 85) AS
SELECT ug.user_key, t.level_key, t.topic_key, ug.group_key, ug.attempts, ug.correct, ug.score,
       ug.hints, ug.hinted, ug.time_ms, ug.last_at
FROM user_group ug JOIN topic_info t ON t.topic_ord = ug.topic_ord
WHERE ug.grain = 0;
CREATE UNIQUE INDEX {index} ON {table} (user_key, level_key, topic_key, group_key);
"""

# Per user and scope: 0 school (the global board, progress totals), 1 group, 2 level (their
# boards), 3 group within a level. Keyed by user first: a tick reads a touched student's rows of
# every scope; the partial index serves the boards' top-N reads. Written in the rollup's order,
# so a student's rows share a page or two (an incremental tick then dirties those, not one page
# per scope), and with room on each page for the rows' next versions.
_STATE_USER_SCOPE = """
CREATE UNLOGGED TABLE {table} WITH (fillfactor = 85) AS
SELECT s.scope, s.key_1, s.key_2, r.user_key, r.attempts, r.correct, r.score, r.hints, r.hinted,
       r.time_ms, r.last_at
FROM rollup r
LEFT JOIN level_info l ON l.level_ord = r.level_ord
CROSS JOIN LATERAL (
    VALUES (CASE r.grain WHEN 3 THEN 0 ELSE 2 END::smallint, coalesce(l.level_key, 0), 0),
           (CASE r.grain WHEN 3 THEN 1 ELSE 3 END::smallint, r.group_min, coalesce(l.level_key, 0))
) s (scope, key_1, key_2)
WHERE r.grain IN (1, 3)
  -- the group scopes from here only for students with all their attempts in one group
  AND (s.scope IN (0, 2) OR NOT EXISTS (SELECT 1 FROM multi_users m WHERE m.user_key = r.user_key))
UNION ALL
SELECT CASE m.grain WHEN 3 THEN 1 ELSE 3 END::smallint, m.group_key, coalesce(l.level_key, 0),
       m.user_key, m.attempts, m.correct, m.score, m.hints, m.hinted, m.time_ms, m.last_at
FROM multi m LEFT JOIN level_info l ON l.level_ord = m.level_ord
WHERE m.grain IN (1, 3);
CREATE UNIQUE INDEX {index} ON {table} (user_key, scope, key_1, key_2);
CREATE INDEX {board_index} ON {table} (scope, key_1, score DESC) WHERE scope < 3;
"""

# In the per-user phase's snapshot: the queue rows that snapshot's attempts include.
_CONSUMED = """
CREATE UNLOGGED TABLE consumed AS SELECT seq FROM attempt_queue;
CREATE UNLOGGED TABLE seen_directory AS SELECT directory_version FROM aggregate_state;
"""

# --- phase 2: scopes over both halves --------------------------------------------------------------

_HALF_VIEWS = ("partials", "candidates", "progress")

# One part of the group_topic rows (see group_info), merged from the halves' partial sums.
_STATS_GROUP_TOPIC = """
CREATE UNLOGGED TABLE {table} AS
SELECT 'group_topic' AS type, g.group_id || ':' || t.topic_id AS entity_id, g.group_id,
       reporting_state.kpi(m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms)
           AS metrics
FROM (
    SELECT key_1, key_2, sum(attempts)::bigint AS attempts, sum(users)::bigint AS users,
           sum(sum_accuracy) AS sum_accuracy, sum(sum_score) AS sum_score,
           sum(hinted)::bigint AS hinted, sum(hints)::bigint AS hints, sum(time_ms) AS time_ms
    FROM partials
    WHERE type = 'group_topic'
      AND key_1 IN (SELECT group_key FROM group_info WHERE part = {part})
    GROUP BY key_1, key_2
) m
JOIN group_info g ON g.group_key = m.key_1
JOIN topic_info t ON t.topic_ord = m.key_2
ORDER BY entity_id  -- the swap inserts in primary-key order (see _SWAP)
"""

# Every group, level and topic of the directory; group_level pairs with attempts only.
_STATS_OTHER = """
CREATE UNLOGGED TABLE stats_other AS
WITH merged AS (
    SELECT type, key_1, key_2, sum(attempts)::bigint AS attempts, sum(users)::bigint AS users,
           sum(sum_accuracy) AS sum_accuracy, sum(sum_score) AS sum_score,
           sum(hinted)::bigint AS hinted, sum(hints)::bigint AS hints, sum(time_ms) AS time_ms
    FROM partials WHERE type NOT IN ('group_topic', 'school')
    GROUP BY type, key_1, key_2
)
SELECT 'group' AS type, g.group_id AS entity_id, g.group_id,
       reporting_state.kpi(m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms)
           AS metrics
FROM group_info g LEFT JOIN merged m ON m.type = 'group' AND m.key_1 = g.group_key
UNION ALL
SELECT 'level', l.level_id, NULL,
       reporting_state.kpi(m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms)
FROM level_info l LEFT JOIN merged m ON m.type = 'level' AND m.key_1 = l.level_ord
UNION ALL
SELECT 'topic', t.topic_id, NULL,
       reporting_state.kpi(m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms)
FROM topic_info t LEFT JOIN merged m ON m.type = 'topic' AND m.key_1 = t.topic_ord
UNION ALL
SELECT 'group_level', g.group_id || ':' || l.level_id, g.group_id,
       reporting_state.kpi(m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms)
FROM merged m
JOIN group_info g ON g.group_key = m.key_1
JOIN level_info l ON l.level_ord = m.key_2
WHERE m.type = 'group_level'
ORDER BY type, entity_id  -- the swap inserts in primary-key order (see _SWAP)
"""

# Every scope's sums by stable keys, for the incremental ticks (reporting_state.scope_sums).
_SCOPE_SUMS = """
CREATE UNLOGGED TABLE scope_sums AS
SELECT m.type,
       CASE m.type WHEN 'topic' THEN t.topic_key WHEN 'level' THEN l.level_key ELSE m.key_1 END
           AS key_1,
       coalesce(CASE m.type WHEN 'group_topic' THEN gt.topic_key
                            WHEN 'group_level' THEN gl.level_key END, 0) AS key_2,
       m.attempts, m.users, m.sum_accuracy, m.sum_score, m.hinted, m.hints, m.time_ms
FROM (
    SELECT type, key_1, key_2, sum(attempts)::bigint AS attempts, sum(users)::bigint AS users,
           sum(sum_accuracy) AS sum_accuracy, sum(sum_score) AS sum_score,
           sum(hinted)::bigint AS hinted, sum(hints)::bigint AS hints, sum(time_ms) AS time_ms
    FROM partials WHERE type <> 'school'
    GROUP BY type, key_1, key_2
) m
LEFT JOIN topic_info t ON m.type = 'topic' AND t.topic_ord = m.key_1
LEFT JOIN level_info l ON m.type = 'level' AND l.level_ord = m.key_1
LEFT JOIN topic_info gt ON m.type = 'group_topic' AND gt.topic_ord = m.key_2
LEFT JOIN level_info gl ON m.type = 'group_level' AND gl.level_ord = m.key_2;
CREATE UNIQUE INDEX scope_sums_key ON scope_sums (type, key_1, key_2);
"""

# Each board's `rankings` from its `candidates` (scope, scope_key, user_id, display_name, score,
# accuracy, attempts): the top %(size)s; rank = 1 + users with a strictly greater score
# (1, 2, 2, 4), so rank() over score alone (SCORE_RANK_KEY). Also the incremental ticks'.
BOARD_RANKINGS: LiteralString = (
    """
ranked AS (
    SELECT c.*,
           rank() OVER (PARTITION BY scope, scope_key ORDER BY """
    + SCORE_RANK_KEY
    + """ DESC) AS rank,
           row_number() OVER (PARTITION BY scope, scope_key
                              ORDER BY """
    + SCORE_RANK_KEY
    + """ DESC, accuracy DESC, user_id) AS position
    FROM candidates c
),
board AS (
    SELECT scope, scope_key,
           jsonb_agg(jsonb_build_object('rank', rank, 'user_id', user_id,
                                        'display_name', display_name, 'score', score,
                                        'accuracy', accuracy, 'attempts', attempts)
                     ORDER BY position) AS rankings
    FROM ranked WHERE position <= %(size)s
    GROUP BY scope, scope_key
)
"""
)

_BOARDS: LiteralString = (
    "CREATE UNLOGGED TABLE boards AS WITH"
    + BOARD_RANKINGS
    + """
SELECT 'global' AS scope, 'global' AS scope_id,
       coalesce((SELECT rankings FROM board WHERE scope = 0), '[]') AS rankings
UNION ALL
SELECT 'group', g.group_id, coalesce(b.rankings, '[]')
FROM group_info g LEFT JOIN board b ON b.scope = 1 AND b.scope_key = g.group_key
UNION ALL
SELECT 'level', l.level_id, coalesce(b.rankings, '[]')
FROM level_info l LEFT JOIN board b ON b.scope = 2 AND b.scope_key = l.level_ord
"""
)

_COUNTS = """
SELECT (SELECT coalesce(sum(attempts), 0) FROM partials WHERE type = 'school'),
       (SELECT coalesce(sum(users), 0) FROM partials WHERE type = 'school'),
       (SELECT json_object_agg(type, n) FROM (
            SELECT type, count(*) AS n FROM stats_other GROUP BY type
            UNION ALL
            SELECT 'group_topic', (SELECT count(*) FROM stats_group_topic_1)
                                  + (SELECT count(*) FROM stats_group_topic_2)) c),
       (SELECT count(*) FROM boards),
       (SELECT count(*) FROM progress)
"""

# --- phase 3: the swap ------------------------------------------------------------------------------

# The staged stats were written in primary-key order and are read back in it (see
# synchronize_seqscans above): 1M rows inserted in key order took 5.3 s, in hash order 14 s,
# because of the index insertions.
_SWAP = (
    # Every lock up front: if one is not granted within lock_timeout, nothing has been done yet.
    "LOCK TABLE materialized_stats, leaderboards, progress_summary IN ROW EXCLUSIVE MODE",
    "DELETE FROM materialized_stats",
    """INSERT INTO materialized_stats (type, entity_id, group_id, metrics, computed_at)
       SELECT type, entity_id, group_id, metrics, %(computed_at)s FROM stats_other
       UNION ALL
       SELECT type, entity_id, group_id, metrics, %(computed_at)s FROM stats_group_topic_1
       UNION ALL
       SELECT type, entity_id, group_id, metrics, %(computed_at)s FROM stats_group_topic_2""",
    # Replacing every board also deletes the expired ones (and boards of vanished scopes).
    "DELETE FROM leaderboards",
    """INSERT INTO leaderboards (scope, scope_id, rankings, computed_at, expires_at)
       SELECT scope, scope_id, rankings, %(computed_at)s, %(expires_at)s FROM boards""",
    "DELETE FROM progress_summary",
    """INSERT INTO progress_summary (user_id, totals, levels, topics, last_activity_at, computed_at)
       SELECT user_id, totals, levels, topics, last_activity_at, %(computed_at)s FROM progress""",
)


# --- the tick -----------------------------------------------------------------------------------


def tick(conn: psycopg.Connection, settings: Settings) -> TickResult:
    """Recompute every derived record and swap them in; on any error nothing derived changes.

    `conn` must have owner rights and no open transaction; the tick commits its own steps and
    opens one helper connection to the same database for the second half of the work. The tick
    is recorded in worker_ticks (running, then success or error); an error is re-raised.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("tick() needs a connection outside any transaction")
    tick_id = ticks.begin_full(conn)
    stage = _Stage(tick_id)
    durations: dict[str, float] = {}
    try:
        with ticks.timed(durations, "setup"), conn.transaction():
            _create_stage(conn, stage)
        with _helper_connection(conn, settings) as helper:
            with ticks.timed(durations, "per_user"):
                computed_at = _per_user_phase(conn, helper, stage, settings)
            with ticks.timed(durations, "scopes"):
                _scope_phase(conn, helper, stage, settings)
        with conn.transaction():
            _use_stage(conn, stage.shared)
            counts = _count(conn)
        result = TickResult(
            tick_id=tick_id,
            computed_at=computed_at,
            attempts=counts.attempts,
            users_with_attempts=counts.users,
            stats=counts.stats,
            leaderboards=counts.leaderboards,
            progress_summaries=counts.progress,
            durations=durations,
        )
        with ticks.timed(durations, "swap"):
            _swap(conn, stage, settings, result)
    except BaseException as error:
        ticks.record_failure(conn, error, mode="full", tick_id=tick_id)
        raise
    finally:
        _drop_stage(conn, stage)
    return result


def vacuum_derived(conn: psycopg.Connection) -> float:
    """VACUUM (ANALYZE) the tables a full tick rewrote; returns the seconds it took.

    A full tick deletes and re-inserts ~1M stats rows and every progress document: left to
    autovacuum (off on some servers, late on busy ones), the dead rows piled up — 10M after a day
    of benchmark ticks, and the swap took 22 s instead of 8. Readers are never blocked by it.
    `conn` must be in autocommit mode.
    """
    started = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) materialized_stats, leaderboards, progress_summary")
    return round(time.perf_counter() - started, 3)


def discard_abandoned(conn: psycopg.Connection) -> int:
    """Drop staging left by killed workers and close their ticks as errors; returns how many.

    Call only while holding the worker lock (no other tick can be running then).
    """
    with conn.transaction():
        schemas = [
            str(row[0])
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (STAGE_PREFIX,)
            )
        ]
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        closed = ticks.close_abandoned(conn)
    if schemas or closed:
        log.warning(
            "discarded an abandoned tick",
            extra={"stage_schemas": len(schemas), "ticks_closed": closed},
        )
    return closed


# --- steps --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stage:
    """The schemas of one tick's staging: one shared, one per half."""

    tick_id: int

    @property
    def shared(self) -> str:
        return f"{STAGE_PREFIX}{self.tick_id}"

    def half(self, half: int) -> str:
        return f"{self.shared}_{half}"

    @property
    def schemas(self) -> list[str]:
        return [self.shared, *(self.half(h) for h in range(HALVES))]


@dataclass(frozen=True, slots=True)
class _Counts:
    attempts: int
    users: int
    stats: dict[str, int]
    leaderboards: int
    progress: int


def _create_stage(conn: psycopg.Connection, stage: _Stage) -> None:
    for schema in stage.schemas:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    _use_stage(conn, stage.shared)
    conn.execute(_SETUP)


def _use_stage(conn: psycopg.Connection, *schemas: str) -> None:
    """Inside a transaction: resolve staging names in these schemas, then in public."""
    path = ", ".join(sql.Identifier(s).as_string(conn) for s in (*schemas, "public"))
    conn.execute("SELECT set_config('search_path', %s, true)", (path,))


def prefer_lz4(conn: psycopg.Connection) -> None:
    """Inside a transaction: compress the progress documents with lz4 where the server has it
    (pglz took ~4 s per half of a full tick at 10M attempts; lz4 is several times faster)."""
    conn.execute(
        "SELECT set_config('default_toast_compression', 'lz4', true) FROM pg_settings"
        " WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)"
    )


def tune(conn: psycopg.Connection, **overrides: str) -> None:
    """Inside a transaction: the tick's planner and output settings (SET LOCAL)."""
    for name, value in {**_SESSION_SETTINGS, **overrides}.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _per_user_phase(
    conn: psycopg.Connection, helper: psycopg.Connection, stage: _Stage, settings: Settings
) -> datetime:
    """Both halves from one exported snapshot; returns that snapshot's time (the computed_at)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
        assert row is not None
        snapshot, computed_at = str(row[0]), row[1]
        # What this snapshot covers, for the swap: the queued attempts it already counts (those
        # queued later stay for the next incremental tick) and the directory it saw.
        _use_stage(conn, stage.shared)
        conn.execute(_CONSUMED)
        # Imported here, before the halves start: an exported snapshot lives only while the
        # exporting transaction is open.
        helper.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        helper.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))

        def helper_half() -> None:
            _half(helper, stage, 1, settings)
            helper.commit()

        _in_parallel(conn, helper, lambda: _half(conn, stage, 0, settings), helper_half)
    assert isinstance(computed_at, datetime)
    return computed_at


def _half(conn: psycopg.Connection, stage: _Stage, half: int, settings: Settings) -> None:
    """Inside the caller's transaction: every per-user table of one half of the users."""
    _use_stage(conn, stage.half(half), stage.shared)
    tune(conn, work_mem=_PER_USER_WORK_MEM)
    # The documents are compressed here, in parallel, and the swap copies them compressed.
    prefer_lz4(conn)
    params = {
        "half": half,
        "halves": HALVES,
        "size": settings.worker.leaderboard_size,
        "zero_totals": _ZERO_TOTALS,
    }
    for step in _HALF_STEPS:
        started = time.perf_counter()
        if step.work_mem:
            tune(conn, work_mem=step.work_mem)
        conn.execute(step.statement, params)
        if step.analyze:
            # Fresh tables have no statistics: without them the planner guessed 200 rows for
            # 50,000 users' JSON documents and hashed them as the small side of a join.
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(step.name)))
        _log_step(step.name, started, half=half)
    started = time.perf_counter()
    _stage_state(conn, half)
    _log_step("state", started, half=half)


def _stage_state(conn: psycopg.Connection, half: int) -> None:
    """Inside the half's transaction: its part of the running sums (see _STATE_USER_TOPIC)."""
    names = state_tables(half)
    conn.execute("SELECT set_config('maintenance_work_mem', '512MB', true)")
    conn.execute(
        sql.SQL(_STATE_USER_TOPIC).format(
            table=sql.Identifier(names.user_topic),
            index=sql.Identifier(f"{names.user_topic}_key"),
        )
    )
    conn.execute(
        sql.SQL(_STATE_USER_SCOPE).format(
            table=sql.Identifier(names.user_scope),
            index=sql.Identifier(f"{names.user_scope}_key"),
            board_index=sql.Identifier(f"{names.user_scope}_board"),
        )
    )
    # Statistics for the incremental ticks' plans (nothing else analyzes these tables soon).
    for table in (names.user_topic, names.user_scope):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _scope_phase(
    conn: psycopg.Connection, helper: psycopg.Connection, stage: _Stage, settings: Settings
) -> None:
    with conn.transaction():
        _use_stage(conn, stage.shared)
        for name in _HALF_VIEWS:
            halves = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(stage.half(h), name))
                for h in range(HALVES)
            )
            conn.execute(sql.SQL("CREATE VIEW {} AS ").format(sql.Identifier(name)) + halves)
    params = {"size": settings.worker.leaderboard_size}

    def group_topics(session: psycopg.Connection, part: int) -> None:
        _use_stage(session, stage.shared)
        tune(session, work_mem=_SCOPE_WORK_MEM)
        session.execute(
            sql.SQL(_STATS_GROUP_TOPIC).format(
                table=sql.Identifier(f"stats_group_topic_{part}"), part=sql.Literal(part)
            )
        )

    def first_part() -> None:
        with conn.transaction():
            group_topics(conn, 1)
            conn.execute(_SCOPE_SUMS)

    def second_part_and_the_rest() -> None:
        group_topics(helper, 2)
        helper.execute(_STATS_OTHER)
        helper.execute(_BOARDS, params)
        helper.commit()

    _in_parallel(conn, helper, first_part, second_part_and_the_rest)


def _count(conn: psycopg.Connection) -> _Counts:
    row = conn.execute(_COUNTS).fetchone()
    assert row is not None
    attempts, users, stats, boards, progress = row
    return _Counts(
        attempts=int(attempts),
        users=int(users),
        stats={str(k): int(v) for k, v in (stats or {}).items()},
        leaderboards=int(boards),
        progress=int(progress),
    )


def _swap(conn: psycopg.Connection, stage: _Stage, settings: Settings, result: TickResult) -> None:
    """Replace the derived rows, close the tick and notify, all in one transaction."""
    params = {
        "computed_at": result.computed_at,
        "expires_at": result.computed_at + timedelta(hours=LEADERBOARD_TTL_HOURS),
    }
    with conn.transaction():
        _use_stage(conn, stage.shared)
        tune(conn)
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)",
            (f"{int(settings.worker.lock_timeout_secs * 1000)}ms",),
        )
        for statement in _SWAP:
            started = time.perf_counter()
            conn.execute(statement, params)
            _log_step(" ".join(statement.split()[:3]), started)
        started = time.perf_counter()
        _install_state(conn, stage, settings.worker.leaderboard_size)
        _log_step("install state", started)
        ticks.finish_full(conn, result)
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (channels.STATS_CHANGED, change_payload(None, tick_id=result.tick_id)),
        )


def _install_state(conn: psycopg.Connection, stage: _Stage, leaderboard_size: int) -> None:
    """Inside the swap: the staged running sums replace the previous ones, and the queued
    attempts this tick counted leave the queue (see _CONSUMED). The sentinel also records the
    size the boards were cut at (see state.is_valid)."""
    conn.execute("DELETE FROM attempt_queue WHERE seq IN (SELECT seq FROM consumed)")
    schema = sql.Identifier(state.SCHEMA)
    conn.execute(
        sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.SQL(", ").join(sql.Identifier(state.SCHEMA, t) for t in state.all_tables())
        )
    )
    moves = [(stage.shared, state.SCOPE_SUMS)]
    for half in range(HALVES):
        tables = state_tables(half)
        moves += [(stage.half(half), tables.user_topic), (stage.half(half), tables.user_scope)]
    for stage_schema, table in moves:
        conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier(stage_schema, table), schema
            )
        )
    conn.execute(
        sql.SQL(
            "CREATE UNLOGGED TABLE {} AS SELECT %s::bigint AS tick_id, %s::int AS leaderboard_size"
        ).format(sql.Identifier(state.SCHEMA, state.SENTINEL)),
        (stage.tick_id, leaderboard_size),
    )
    conn.execute(
        "UPDATE aggregate_state SET state_tick_id = %s,"
        " state_version = (SELECT directory_version FROM seen_directory)",
        (stage.tick_id,),
    )


def _drop_stage(conn: psycopg.Connection, stage: _Stage) -> None:
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            for schema in stage.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
    except psycopg.Error as failure:
        log.warning(
            "could not drop the tick's staging",
            extra={"tick_id": stage.tick_id, "error": str(failure)},
        )


# --- plumbing -----------------------------------------------------------------------------------


@contextmanager
def _helper_connection(
    conn: psycopg.Connection, settings: Settings
) -> Iterator[psycopg.Connection]:
    """A second session on the same database, for the other half of the work (at the worker's
    CPU priority, like the first)."""
    with psycopg.connect(
        conn.info.dsn,
        password=conn.info.password,
        application_name="reporting-worker-helper",
    ) as helper:
        lower_backend_priority(helper, settings.worker.nice)
        yield helper


def _log_step(name: str, started: float, **extra: object) -> None:
    seconds = round(time.perf_counter() - started, 3)
    log.debug("tick step", extra={"step": name, "seconds": seconds, **extra})


def _in_parallel(
    conn: psycopg.Connection,
    helper: psycopg.Connection,
    on_conn: Callable[[], T],
    on_helper: Callable[[], U],
) -> tuple[T, U]:
    """Run `on_helper` in a thread (on `helper`) while `on_conn` runs here (on `conn`).

    psycopg releases the GIL while a statement runs, so the two really overlap. When one side
    fails, the other side's running statement is cancelled and the first failure is raised.
    """
    lock = threading.Lock()
    conn_busy = True

    def cancel_conn_on_failure(done: Future[U]) -> None:
        if done.exception() is not None:
            with lock:
                if conn_busy:
                    conn.cancel_safe()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tick-helper") as pool:
        future = pool.submit(on_helper)
        future.add_done_callback(cancel_conn_on_failure)
        try:
            mine = on_conn()
        except BaseException as error:
            with lock:
                conn_busy = False
            helper.cancel_safe()
            helper_error = future.exception()  # waits for the helper to stop
            if helper_error is not None and isinstance(error, psycopg.errors.QueryCanceled):
                raise helper_error from error  # we were cancelled because the helper failed
            raise
        with lock:
            conn_busy = False
        return mine, future.result()
