"""Lower bounds for the tick targets: the least SQL any implementation must run, timed on the
same school and machine as the ticks.

    .venv/bin/python bench/bench_floor.py             # on bench_seed.py's school (bench10m)
    .venv/bin/python bench/bench_floor.py --runs 5

Full tick (issue 2: <= 30 s). Two steps no design can skip, each session summing half of the
students, both sessions at once (one per core, as the tick splits them):
1. every attempt summed per (student, topic): a topic's `avg_accuracy` in a group is a mean over
   its students, and `progress_summary.topics[]` lists each, so these sums must exist (~9M rows
   for 10M attempts);
2. from them, each student's `topics[]` as JSON: one entry per topic with the contract's numbers.
Then, in one session, for a swap that never blocks a reader (aggregate.py's: one transaction
writes new row versions into the tables readers read):
3. the publish: the rows a tick makes visible, copied from the derived tables as they stand
   (~1M materialized_stats rows, every progress record, compressed as stored) into empty copies of
   those tables with their indexes. An empty table is the cheap case: the real swap writes next
   to the previous tick's rows, which readers may still be reading. (A swap by renaming tables
   would not write them again, but takes a lock that stops every reader while it waits.)
Nothing else: no levels or totals, no scopes, no leaderboards, no running sums. The tables are
dropped with a rollback.

Incremental tick (issue 6: <= 2 s for 100,000 new attempts). Only the rewrite of the
progress_summary records of the students those attempts touch (bench_incremental.py's `lessons`
spread: the students of every 8th group, ~13,500), each set to its own stored value plus a space:
no attempt is read, no sum computed, no other table written. Rolled back. This one holds for the
records as stored here (each array one json value, which any change rewrites whole).

They tell how much of each target the unavoidable work alone takes on this machine today, and how
far the ticks are from it: compare them with bench_tick.py and bench_incremental.py run in the same
session (the machines' speed differs from day to day).
"""

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).parent))
from bench_incremental import LESSON_GROUP_EVERY
from bench_seed import seeded_database
from bench_tick import machine

from reporting.settings import load_settings
from reporting.stats import aggregate
from reporting.stats.state import HALVES

FULL_TARGET_SECONDS = 30.0
INCREMENTAL_TARGET_SECONDS = 2.0

_SUMS = """
CREATE UNLOGGED TABLE floor_sums_{half} AS
SELECT user_key, topic_key, count(*)::int AS attempts,
       (count(*) FILTER (WHERE is_correct))::int AS correct, sum(score) AS score,
       sum(hints_used) AS hints, sum(time_spent_ms::float8) AS time_ms
FROM attempts
WHERE mod(user_key, {halves}) = {half}
GROUP BY user_key, topic_key
"""

_DOCUMENTS = """
CREATE UNLOGGED TABLE floor_documents_{half} AS
SELECT user_key,
       ('[' || string_agg(concat('{{"topic_id":', topic_key, ',"attempts":', attempts,
                                 ',"correct":', correct, ',"accuracy":', correct::float8 / attempts,
                                 ',"score":', score, ',"hints_used":', hints,
                                 ',"avg_time_seconds":', time_ms / 1000 / attempts, '}}'),
                          ',') || ']')::json AS topics
FROM floor_sums_{half}
GROUP BY user_key
"""

# The students bench_incremental.py's `lessons` spread gives attempts to.
_TOUCHED = """
CREATE TEMP TABLE floor_touched ON COMMIT DROP AS
SELECT DISTINCT u.id
FROM (SELECT key, row_number() OVER (ORDER BY key) AS n FROM groups) g
JOIN user_groups ug ON ug.group_key = g.key
JOIN users u ON u.key = ug.user_key
WHERE g.n %% %(every)s = 0
"""

_REWRITE = """
UPDATE progress_summary p
SET totals = (p.totals::text || ' ')::json, levels = (p.levels::text || ' ')::json,
    topics = (p.topics::text || ' ')::json, computed_at = now()
FROM floor_touched t
WHERE t.id = p.user_id
"""


def full_floor(url: str) -> tuple[float, list[dict[str, float]]]:
    """Wall time of both halves at once, and each half's step times."""

    def half(number: int) -> dict[str, float]:
        steps: dict[str, float] = {}
        with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
            # The tick's session settings, with room to hash a half's sums in memory.
            aggregate.tune(conn, work_mem="1GB")
            aggregate.prefer_lz4(conn)
            for name, statement in (("sums", _SUMS), ("documents", _DOCUMENTS)):
                started = time.perf_counter()
                # Names of their own: the other session would wait for this one's table name.
                conn.execute(
                    sql.SQL(statement).format(half=sql.Literal(number), halves=sql.Literal(HALVES))
                )
                steps[name] = time.perf_counter() - started
        return steps

    started = time.perf_counter()
    with ThreadPoolExecutor(HALVES) as pool:
        steps = list(pool.map(half, range(HALVES)))
    return time.perf_counter() - started, steps


# Logged tables, as the served ones are; dropped with the rollback.
_PUBLISH_TABLES = (
    "CREATE TABLE floor_stats (LIKE materialized_stats INCLUDING ALL)",
    "CREATE TABLE floor_progress (LIKE progress_summary INCLUDING ALL)",
)
_PUBLISH = (
    "INSERT INTO floor_stats SELECT * FROM materialized_stats ORDER BY type, entity_id",
    "INSERT INTO floor_progress SELECT * FROM progress_summary",
)


def publish_floor(url: str) -> float:
    """Seconds to write one tick's visible rows into empty copies of the served tables."""
    with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
        aggregate.tune(conn)
        for statement in _PUBLISH_TABLES:
            conn.execute(statement)
        started = time.perf_counter()
        for statement in _PUBLISH:
            conn.execute(statement)
        return time.perf_counter() - started


def incremental_floor(url: str) -> tuple[float, int]:
    """Seconds to rewrite the touched students' records, and how many there were."""
    with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
        aggregate.tune(conn)
        aggregate.prefer_lz4(conn)
        conn.execute(_TOUCHED, {"every": LESSON_GROUP_EVERY})
        started = time.perf_counter()
        rewritten = conn.execute(_REWRITE).rowcount
        return time.perf_counter() - started, rewritten


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default="bench10m", help="kept database of the school")
    args = parser.parse_args()

    url = seeded_database(args.database)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM progress_summary)"
        ).fetchone()
    assert row is not None
    attempts, documents = row
    if documents == 0:
        print("progress_summary is empty: a full tick first (not timed)")
        os.environ["DATABASE_URL"] = url
        with psycopg.connect(url, autocommit=True) as conn:
            aggregate.tick(conn, load_settings(require_jwt=False))
            aggregate.vacuum_derived(conn)
            counted = conn.execute("SELECT count(*) FROM progress_summary").fetchone()
            assert counted is not None
            documents = counted[0]
    print(f"floor benchmark: {attempts:,} attempts, {documents:,} progress records")
    machine("before")
    full, rewrite = [], []
    for run in range(1, args.runs + 1):
        wall, steps = full_floor(url)
        split = "; ".join(
            f"half {n}: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items())
            for n, s in enumerate(steps)
        )
        publish = publish_floor(url)
        full.append(wall + publish)
        seconds, rewritten = incremental_floor(url)
        rewrite.append(seconds)
        print(
            f"  run {run}: full-tick floor {wall + publish:6.1f} s (both halves at once"
            f" {wall:.1f}: {split}; publish {publish:.1f});"
            f" rewrite of {rewritten:,} progress records {seconds:5.2f} s"
        )
    machine("after")
    print(
        f"median full-tick floor {statistics.median(full):.1f} s"
        f" (the target is {FULL_TARGET_SECONDS:.0f} s for the whole tick);"
        f" median rewrite floor {statistics.median(rewrite):.2f} s"
        f" (the target is {INCREMENTAL_TARGET_SECONDS:.0f} s for the whole incremental tick)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
