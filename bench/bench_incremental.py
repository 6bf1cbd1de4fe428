"""Incremental tick benchmark: new attempts on top of the 10M-attempt school, folded in by an
incremental tick, against a full tick measured in the same run.

Targets (issue 6): an incremental tick with 100,000 new attempts <= 2 s, and >= 10x faster than a
full tick.

    .venv/bin/python bench/bench_incremental.py                  # 3 rounds, "lessons" spread
    .venv/bin/python bench/bench_incremental.py --spread uniform  # the worst case, see below
    .venv/bin/python bench/bench_incremental.py --new 10000 --runs 5

The school is bench_seed.py's (database `bench10m`, shared with the other benchmarks, on
DATABASE_URL's server or the embedded one). A full tick runs first (it also builds the running
sums), then the VACUUM the worker runs after one; then each round inserts `--new` attempts
through the attempts table (so the queue trigger runs, as for API ingestion; the insert is not
timed) and times `incremental.tick`, in this process, on one connection, as the worker calls
them.

How the new attempts are spread matters, because a tick also rebuilds the progress document of
every student it touches (~90 topic entries each at this scale):
- `lessons` (default): what an hour of school looks like: 250 of the 2,000 groups have a lesson,
  every student of those groups (~12,500) makes 8 attempts on 2 topics of a level.
- `uniform`: each attempt by a random student of the 100,000, on a random topic: every student is
  touched, so the tick rebuilds nearly every progress document (a full tick's worth of that work).

Afterwards the attempts this run added are deleted and the running sums marked stale (attempts are
never deleted by the service, so the sums cannot follow): the next tick of any benchmark is full.
"""

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_seed import seeded_database
from bench_tick import machine

from reporting.settings import load_settings
from reporting.stats import aggregate, incremental

TARGET_SECONDS = 2.0
TARGET_RATIO = 10.0
EVENT_PREFIX = "bench-incremental-"
# `lessons` gives attempts to the students of every LESSON_GROUP_EVERY-th group.
LESSON_GROUP_EVERY = 8

# `lessons`: 250 groups (every 8th), their students in their own group, 4 attempts on each of 2
# topics of one level per group and round; `uniform`: any student, any topic. %(round)s varies
# the topics between rounds.
_INSERT = {
    "lessons": """
INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct, score,
                      hints_used, time_spent_ms, attempted_at)
SELECT %(prefix)s || %(round)s || '-' || row_number() OVER (),
       ug.user_key, ug.group_key, t.key, 'task-live', random() < 0.7,
       floor(random() * 11), (random() * 2)::int, 5000 + (random() * 60000)::int,
       now() - random() * interval '1 hour'
FROM (SELECT g.key, row_number() OVER (ORDER BY g.key) AS n FROM groups g) g
JOIN user_groups ug ON ug.group_key = g.key
CROSS JOIN LATERAL (
    SELECT t.key FROM topics t
    WHERE t.level_key = (SELECT key FROM levels ORDER BY key
                         OFFSET (g.n + %(round)s) %% (SELECT count(*) FROM levels) LIMIT 1)
    ORDER BY t.key OFFSET (g.n + %(round)s) %% 10 LIMIT 2
) t
CROSS JOIN generate_series(1, 4) AS k
WHERE g.n %% %(every)s = 0
LIMIT %(count)s
""",
    "uniform": """
INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct, score,
                      hints_used, time_spent_ms, attempted_at)
SELECT %(prefix)s || %(round)s || '-' || i, ug.user_key, ug.group_key,
       1 + (random() * (%(topics)s - 1))::int, 'task-live', random() < 0.7,
       floor(random() * 11), (random() * 2)::int, 5000 + (random() * 60000)::int,
       now() - random() * interval '1 hour'
FROM generate_series(1, %(count)s) AS i
JOIN LATERAL (
    SELECT user_key, group_key FROM user_groups
    WHERE user_key = 1 + ((i * 7919 + %(round)s * 104729) %% %(students)s)
    LIMIT 1
) ug ON true
""",
}


def insert_new(conn: psycopg.Connection, spread: str, count: int, round_no: int) -> int:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM topics)"
    ).fetchone()
    assert row is not None
    students, topics = row
    with conn.transaction():
        inserted = conn.execute(
            _INSERT[spread],
            {
                "prefix": EVENT_PREFIX,
                "every": LESSON_GROUP_EVERY,
                "round": round_no,
                "count": count,
                "students": students,
                "topics": topics,
            },
        ).rowcount
    return inserted


def touched(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(DISTINCT user_key), count(DISTINCT group_key) FROM attempt_queue"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def remove_added_attempts(conn: psycopg.Connection, prefix: str) -> int:
    """Delete the attempts a benchmark added (event ids starting with `prefix`); returns how
    many. The running sums cannot follow a deletion: the DELETE's trigger marks them stale
    (migration 0004), so the next tick is a full one, and the queue is emptied."""
    with conn.transaction():
        deleted = conn.execute(
            "DELETE FROM attempts WHERE event_id LIKE %s", (prefix + "%",)
        ).rowcount
        conn.execute("TRUNCATE attempt_queue")
    return deleted


def clean_up(conn: psycopg.Connection) -> None:
    started = time.perf_counter()
    deleted = remove_added_attempts(conn, EVENT_PREFIX)
    print(
        f"clean-up: {deleted:,} added attempts deleted, running sums marked stale"
        f" ({time.perf_counter() - started:.1f} s); the next tick of any benchmark is a full one"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new", type=int, default=100_000, help="new attempts per round")
    parser.add_argument("--spread", choices=sorted(_INSERT), default="lessons")
    parser.add_argument("--database", default="bench10m")
    parser.add_argument("--verbose", action="store_true", help="log every step of the ticks")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(format="    %(message)s %(step)s %(seconds)s", level=logging.WARNING)
        logging.getLogger("reporting.stats.aggregate").setLevel(logging.DEBUG)

    url = seeded_database(args.database)
    os.environ["DATABASE_URL"] = url
    settings = load_settings(require_jwt=False)
    print(
        f"incremental tick benchmark: {args.runs} rounds of {args.new:,} new attempts"
        f" ({args.spread}) on database {args.database}"
    )
    machine("before")
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            started = time.perf_counter()
            full = aggregate.tick(conn, settings)
            full_seconds = time.perf_counter() - started
            # As the worker does after a full tick (see vacuum_derived), not timed: without it,
            # a day of runs left materialized_stats and progress_summary at 2.4 and 3.4 GB (0.4 GB
            # each once compacted) for every benchmark on this database.
            vacuum = aggregate.vacuum_derived(conn)
            print(
                f"  full tick: {full_seconds:6.2f} s ({full.attempts:,} attempts);"
                f" then VACUUM of the derived tables {vacuum:.1f} s (not counted)"
            )
            seconds = []
            for round_no in range(1, args.runs + 1):
                inserted = insert_new(conn, args.spread, args.new, round_no)
                users, groups = touched(conn)
                started = time.perf_counter()
                result = incremental.tick(conn, settings)
                elapsed = time.perf_counter() - started
                if result is None:
                    raise SystemExit("the running sums were not valid after a full tick")
                seconds.append(elapsed)
                phases = ", ".join(f"{k} {v:.2f}" for k, v in result.durations.items())
                print(
                    f"  round {round_no}: {inserted:,} new attempts of {users:,} students in"
                    f" {groups:,} groups -> incremental tick {elapsed:5.2f} s ({phases});"
                    f" {sum(result.stats.values()):,} stats rows, {result.leaderboards} boards,"
                    f" {result.progress_summaries:,} progress documents"
                )
        finally:
            machine("after")
            clean_up(conn)
    median = statistics.median(seconds)
    ratio = full_seconds / median
    print(
        f"median incremental tick {median:.2f} s"
        f" ({'meets' if median <= TARGET_SECONDS else 'MISSES'} the target of"
        f" {TARGET_SECONDS:.0f} s); full tick {full_seconds:.1f} s in the same run:"
        f" {ratio:.0f}x faster ({'meets' if ratio >= TARGET_RATIO else 'MISSES'} the"
        f" target of {TARGET_RATIO:.0f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
