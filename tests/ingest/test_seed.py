"""`reporting seed`: the synthetic school's shape, its determinism, and its refusal of a used database."""

import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from reporting.ingest.seed import SeedError, SeedSpec, seed
from tests.ingest.conftest import count
from tests.ops.processes import service_env

UNTIL = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
SPEC = SeedSpec(students=300, groups=12, topics=15, levels=4, attempts=30_000, seed=7, until=UNTIL)

CHECKSUM = """
SELECT md5(string_agg(concat_ws('|', a.event_id, u.id, u.display_name, g.id, g.name, t.id, t.name,
                                 a.task_id, a.is_correct, a.score, a.hints_used, a.time_spent_ms,
                                 extract(epoch FROM a.attempted_at)),
                      ',' ORDER BY a.event_id))
FROM attempts a
JOIN users u ON u.key = a.user_key
JOIN groups g ON g.key = a.group_key
JOIN topics t ON t.key = a.topic_key
"""

EMPTY = "TRUNCATE attempts, user_groups, users, groups, topics, levels RESTART IDENTITY"


def seeded(url: str, spec: SeedSpec) -> str:
    """Seed, commit and return the checksum of every attempt with its directory names."""
    with psycopg.connect(url) as conn:
        seed(conn, spec)
        conn.commit()
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    return str(row[0])


def test_the_school_has_the_asked_shape(fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url) as conn:
        result = seed(conn, SPEC)
        conn.commit()
        groups = [r[0] for r in conn.execute("SELECT name FROM groups ORDER BY key")]
        names = [r[0] for r in conn.execute("SELECT display_name FROM users")]
        topic = conn.execute("SELECT name FROM topics ORDER BY key LIMIT 1").fetchone()
        span = conn.execute("SELECT min(attempted_at), max(attempted_at) FROM attempts").fetchone()
        per_student = [
            float(r[0])
            for r in conn.execute(
                "SELECT avg(is_correct::int) FROM attempts GROUP BY user_key HAVING count(*) >= 50"
            )
        ]
        indexes = conn.execute(
            "SELECT array_agg(indexname ORDER BY indexname) FROM pg_indexes"
            " WHERE tablename = 'attempts'"
        ).fetchone()

    assert (result.groups, result.students, result.levels, result.topics, result.attempts) == (
        12,
        300,
        4,
        15,
        30_000,
    )
    assert count(fresh_db_url, "SELECT count(*) FROM groups") == 12
    assert count(fresh_db_url, "SELECT count(*) FROM users") == 300
    assert count(fresh_db_url, "SELECT count(*) FROM levels") == 4
    assert count(fresh_db_url, "SELECT count(*) FROM topics") == 15
    assert count(fresh_db_url) == 30_000
    assert groups[:3] == ["5А", "5Б", "5В"]
    assert all(re.fullmatch(r"\d{1,2}[А-Я]", name) for name in groups)
    assert all(re.fullmatch(r"[А-ЯЁ][а-яё]+ [А-ЯЁ][а-яё]+", name) for name in names)
    assert any(name.split()[0].endswith("а") for name in names)  # girls: «Иванова Анна»
    assert topic == ("Натуральные числа. Основные понятия",)
    assert span is not None
    first, last = span
    assert UNTIL - timedelta(days=366) <= first and last <= UNTIL
    assert last > UNTIL - timedelta(days=3)
    # Accuracy differs from student to student.
    assert max(per_student) - min(per_student) > 0.3
    # Dropped for the load, built again after it.
    assert indexes == (["attempts_event_id_key", "attempts_group_key_attempted_at_idx"],)


def test_every_attempt_is_in_one_of_its_students_groups(fresh_db_url: str) -> None:
    seeded(fresh_db_url, SPEC)

    outside = count(
        fresh_db_url,
        "SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM user_groups ug"
        " WHERE ug.user_key = a.user_key AND ug.group_key = a.group_key)",
    )
    in_two = count(
        fresh_db_url,
        "SELECT count(*) FROM (SELECT user_key FROM user_groups GROUP BY user_key"
        " HAVING count(*) = 2) AS twice",
    )
    assert outside == 0
    assert 10 <= in_two <= 60  # about 10 % of 300
    assert count(fresh_db_url, "SELECT count(DISTINCT user_key) FROM user_groups") == 300


def test_the_same_seed_gives_the_same_school(fresh_db_url: str) -> None:
    first = seeded(fresh_db_url, SPEC)
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute(EMPTY)
    again = seeded(fresh_db_url, SPEC)
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute(EMPTY)
    other = seeded(fresh_db_url, replace(SPEC, seed=8))

    assert again == first
    assert other != first


def test_a_database_that_holds_data_is_refused(fresh_db_url: str) -> None:
    seeded(fresh_db_url, SPEC)

    with psycopg.connect(fresh_db_url) as conn, pytest.raises(SeedError, match="not empty"):
        seed(conn, replace(SPEC, seed=9))

    assert count(fresh_db_url) == 30_000
    assert count(fresh_db_url, "SELECT count(*) FROM attempts WHERE event_id LIKE 'seed-9-%'") == 0


def test_later_ingestion_gets_keys_past_the_seeded_ones(fresh_db_url: str) -> None:
    seeded(fresh_db_url, SPEC)

    with psycopg.connect(fresh_db_url) as conn:
        row = conn.execute(
            "INSERT INTO groups (id, name) VALUES ('g-new', '9Я') RETURNING key"
        ).fetchone()

    assert row == (13,)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (replace(SPEC, students=0), "--students"),
        (replace(SPEC, topics=2), "--topics"),
        (replace(SPEC, attempts=-1), "--attempts"),
    ],
)
def test_a_bad_spec_is_refused_before_anything_is_written(
    fresh_db_url: str, spec: SeedSpec, message: str
) -> None:
    with psycopg.connect(fresh_db_url) as conn, pytest.raises(SeedError, match=message):
        seed(conn, spec)

    assert count(fresh_db_url, "SELECT count(*) FROM groups") == 0


@pytest.mark.slow
def test_the_console_script_seeds_once_and_then_refuses(fresh_db_url: str) -> None:
    command = [
        os.path.join(os.path.dirname(sys.executable), "reporting"),
        "seed",
        "--students=50",
        "--groups=4",
        "--topics=6",
        "--levels=2",
        "--attempts=5000",
        "--seed=3",
        "--until=2026-06-01",  # the same rows on any day
    ]
    env = service_env(
        database_url=fresh_db_url, data_dir=None, extra={"REPORTING_LOG_JSON": "false"}
    )

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert first.returncode == 0, first.stderr
    assert "seeded 4 groups, 50 students, 2 levels, 6 topics, 5000 attempts" in first.stdout
    assert second.returncode == 1
    assert "error: the database is not empty (4 groups, 50 users" in second.stderr
    assert count(fresh_db_url) == 5000
    # The year of attempts ends at --until (midnight UTC of that date).
    with psycopg.connect(fresh_db_url) as conn:
        row = conn.execute("SELECT min(attempted_at), max(attempted_at) FROM attempts").fetchone()
    assert row is not None
    until = datetime(2026, 6, 1, tzinfo=UTC)
    assert until - timedelta(days=366) <= row[0] and row[1] <= until
