"""`reporting seed`: a deterministic synthetic school, generated inside PostgreSQL.

The school: groups named like «7А» (grades 5–11, ten letters; past 70 groups the school number
is added), students named like «Иванова Анна», about 10 % of them in a second group, levels that
are sections of a maths course («Дроби») and topics within them («Дроби. Текстовые задачи»).
Attempts are spread over the 365 days before `until` (school hours, 08:00–21:00 UTC). Each
student has an ability and each topic a difficulty; they set the chance of a correct answer, and a
wrong answer tends to come with more hints, more time and a lower score. An attempt's group is
always one of its student's groups.

Determinism: every random choice is `hashint8extended(i, salt)` of a row number with a salt
derived from `--seed`, so the same spec (and the same `until`) gives the same rows, byte for byte.
Ids are `group-0001`, `user-000001`, `level-01`, `topic-001`; event ids `seed-{seed}-{i}` with
`i` zero-padded to the width of `--attempts` (`seed-1-00000001`).

An empty database only: seeding refuses (SeedError) when the directory or attempts hold anything,
because the generated ids would collide with real ones and a synthetic school mixed into real data
helps nobody. Use a fresh database (DATABASE_URL) or data dir (REPORTING_DATA_DIR) instead.

Speed (≥ 200k attempts/s at 10M): no Python loop over attempts — one INSERT ... SELECT over
generate_series per million rows. The indexes of `attempts` are dropped first and rebuilt once at
the end (a sorted build is far cheaper than 10M index insertions), then ANALYZE; the foreign keys
of `user_groups` are likewise added back after its rows, checked in one join. Everything runs
in the caller's one transaction, so an error or a kill leaves the database as it was; that is also
why the load is not split over two sessions — two sessions cannot share a transaction, and a
crash between them would leave `attempts` without its unique index.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import LiteralString, cast

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

CHUNK_ATTEMPTS = 1_000_000
SECOND_GROUP_PERCENT = 10
TASKS_PER_TOPIC = 30

GRADES = (5, 6, 7, 8, 9, 10, 11)
LETTERS = ("А", "Б", "В", "Г", "Д", "Е", "Ж", "З", "И", "К")

# Surnames in their masculine form; each one's feminine form adds «а» (Иванов → Иванова).
SURNAMES = (
    "Иванов", "Смирнов", "Кузнецов", "Попов", "Васильев", "Петров", "Соколов", "Михайлов",
    "Новиков", "Фёдоров", "Морозов", "Волков", "Алексеев", "Лебедев", "Семёнов", "Егоров",
    "Павлов", "Козлов", "Степанов", "Николаев", "Орлов", "Андреев", "Макаров", "Никитин",
    "Захаров", "Зайцев", "Соловьёв", "Борисов", "Яковлев", "Григорьев", "Романов", "Воробьёв",
    "Сергеев", "Кузьмин", "Фролов", "Александров", "Дмитриев", "Королёв", "Гусев", "Киселёв",
    "Ильин", "Максимов", "Поляков", "Сорокин", "Виноградов", "Ковалёв", "Белов", "Медведев",
    "Антонов", "Тарасов", "Жуков", "Баранов", "Филиппов", "Комаров", "Давыдов", "Беляев",
    "Герасимов", "Богданов", "Осипов", "Сидоров",
)  # fmt: skip
MALE_NAMES = (
    "Александр", "Дмитрий", "Максим", "Сергей", "Андрей", "Алексей", "Артём", "Илья", "Кирилл",
    "Михаил", "Никита", "Матвей", "Роман", "Егор", "Арсений", "Иван", "Денис", "Евгений",
    "Даниил", "Тимофей", "Владислав", "Игорь", "Владимир", "Павел", "Руслан", "Марк",
    "Константин", "Тимур", "Олег", "Ярослав",
)  # fmt: skip
FEMALE_NAMES = (
    "Анна", "Мария", "Елена", "Дарья", "Алина", "Ирина", "Екатерина", "Арина", "Полина",
    "Ольга", "Юлия", "Татьяна", "Наталья", "Виктория", "Елизавета", "Анастасия", "Валерия",
    "Ксения", "Софья", "Алиса", "Вероника", "Ева", "Варвара", "Милана", "Кристина", "Ульяна",
    "Василиса", "Таисия", "Диана", "Маргарита",
)  # fmt: skip
LEVEL_NAMES = (
    "Натуральные числа", "Дроби", "Десятичные дроби", "Проценты", "Отрицательные числа",
    "Буквенные выражения", "Линейные уравнения", "Неравенства", "Степени", "Многочлены",
    "Функции и графики", "Квадратные уравнения", "Системы уравнений", "Прогрессии",
    "Тригонометрия", "Логарифмы", "Производная", "Планиметрия", "Стереометрия",
    "Вероятность и статистика",
)  # fmt: skip
TOPIC_KINDS = (
    "Основные понятия", "Сравнение", "Вычисления", "Преобразования", "Текстовые задачи",
    "Задачи на движение", "Задачи на работу", "Устный счёт", "Практикум", "Самостоятельная работа",
    "Повторение", "Олимпиадные задачи", "Контрольная работа",
)  # fmt: skip


assert len(MALE_NAMES) == len(FEMALE_NAMES), "a student's first name indexes either list"


class SeedError(Exception):
    """The seed cannot run (bad spec, non-empty database); str() says why in one line."""


@dataclass(frozen=True, slots=True)
class SeedSpec:
    students: int
    groups: int
    topics: int
    levels: int
    attempts: int
    seed: int
    until: datetime | None = None
    """Attempts fall in the 365 days before this moment; None = now, to the minute."""


@dataclass(frozen=True, slots=True)
class SeedResult:
    groups: int
    students: int
    levels: int
    topics: int
    attempts: int
    directory_seconds: float = 0.0
    generate_seconds: float = 0.0
    index_seconds: float = 0.0
    analyze_seconds: float = 0.0


def seed(conn: psycopg.Connection, spec: SeedSpec) -> SeedResult:
    """Load the school atomically: inside the caller's transaction (the caller commits), or in
    one of its own on an autocommit connection. SeedError, with nothing written, if it cannot."""
    _check(spec)
    until = spec.until or datetime.now(UTC).replace(second=0, microsecond=0)
    params = _params(spec, until)
    with conn.transaction():
        return _load(conn, spec, params)


def _load(conn: psycopg.Connection, spec: SeedSpec, params: dict[str, object]) -> SeedResult:
    conn.execute(
        "LOCK TABLE groups, users, user_groups, levels, topics, attempts IN EXCLUSIVE MODE"
    )
    _require_empty(conn)
    conn.execute("SET LOCAL jit = off")  # compiling these expressions costs more than it saves

    started = time.perf_counter()
    foreign_keys = _drop_foreign_keys(conn, "user_groups")
    for statement in _DIRECTORY:
        conn.execute(statement, params)
    for add_constraint in foreign_keys:
        conn.execute(add_constraint)
    directory_done = time.perf_counter()
    log.info("seed: directory loaded", extra={"students": spec.students, "groups": spec.groups})

    indexes = _drop_indexes(conn)
    # Not queued for the incremental ticks: the school is new, so the analytics worker's running
    # sums do not exist yet and its first tick is a full one (the directory bumped its version).
    conn.execute("ALTER TABLE attempts DISABLE TRIGGER attempts_queue")
    for low in range(1, spec.attempts + 1, CHUNK_ATTEMPTS):
        high = min(low + CHUNK_ATTEMPTS - 1, spec.attempts)
        conn.execute(_ATTEMPTS, {**params, "low": low, "high": high})
        log.info("seed: attempts generated", extra={"done": high, "of": spec.attempts})
    conn.execute("ALTER TABLE attempts ENABLE TRIGGER attempts_queue")
    generated = time.perf_counter()

    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for create_index in indexes:
        conn.execute(sql.SQL(create_index))
    indexed = time.perf_counter()
    conn.execute("ANALYZE groups, users, user_groups, levels, topics, attempts")
    analyzed = time.perf_counter()

    return SeedResult(
        groups=spec.groups,
        students=spec.students,
        levels=spec.levels,
        topics=spec.topics,
        attempts=spec.attempts,
        directory_seconds=directory_done - started,
        generate_seconds=generated - directory_done,
        index_seconds=indexed - generated,
        analyze_seconds=analyzed - indexed,
    )


def _check(spec: SeedSpec) -> None:
    for name in ("students", "groups", "levels"):
        if getattr(spec, name) < 1:
            raise SeedError(f"--{name} must be at least 1")
    if spec.topics < spec.levels:
        raise SeedError("--topics must be at least --levels (every level needs a topic)")
    if spec.attempts < 0:
        raise SeedError("--attempts must not be negative")
    if not 0 <= spec.seed < 2**40:
        raise SeedError("--seed must be between 0 and 2^40")


def _require_empty(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM users),"
        " (SELECT count(*) FROM levels), (SELECT count(*) FROM topics),"
        " EXISTS (SELECT 1 FROM attempts)"
    ).fetchone()
    assert row is not None
    groups, users, levels, topics, has_attempts = row
    if groups or users or levels or topics or has_attempts:
        raise SeedError(
            f"the database is not empty ({groups} groups, {users} users, {levels} levels,"
            f" {topics} topics{', and attempts' if has_attempts else ''}): seed loads only into"
            " an empty one; point DATABASE_URL or REPORTING_DATA_DIR at a fresh database"
        )


def _drop_indexes(conn: psycopg.Connection) -> list[LiteralString]:
    """Drop the plain indexes of attempts (not those behind constraints); returns their DDL."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = 'attempts'::regclass"
        "   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        " ORDER BY x.indisunique DESC, i.relname"
    ).fetchall()
    for name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    # The definitions are PostgreSQL's own rendering of indexes it holds, not outside input.
    return [cast(LiteralString, definition) for _, definition in rows]


def _drop_foreign_keys(conn: psycopg.Connection, table: LiteralString) -> list[sql.Composed]:
    """Drop the table's foreign keys; returns the DDL that adds them back. Adding one back checks
    every row in one join, where 100k memberships took 4 s of per-row trigger checks."""
    rows = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
        (table,),
    ).fetchall()
    restore = []
    for name, definition in rows:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
        # PostgreSQL's own rendering of a constraint it holds, not outside input.
        restore.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table),
                sql.Identifier(name),
                sql.SQL(cast(LiteralString, definition)),
            )
        )
    return restore


def _salt(seed: int, stream: int) -> int:
    """A distinct hash salt per random stream; seed < 2^40 keeps it inside bigint."""
    return seed * 64 + stream


def _params(spec: SeedSpec, until: datetime) -> dict[str, object]:
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    day0 = until.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "students": spec.students,
        "groups": spec.groups,
        "levels": spec.levels,
        "topics": spec.topics,
        "until_epoch": int(until.timestamp()),
        "day0_epoch": int(day0.timestamp()),
        "event_prefix": f"seed-{spec.seed}-",
        # Zero-padded, the event ids come out in index order: the unique index builds 3x faster.
        "event_width": len(str(spec.attempts)),
        "second_percent": SECOND_GROUP_PERCENT,
        "tasks": TASKS_PER_TOPIC,
        "grades": list(GRADES),
        "letters": list(LETTERS),
        "surnames": list(SURNAMES),
        "male_names": list(MALE_NAMES),
        "female_names": list(FEMALE_NAMES),
        "level_names": list(LEVEL_NAMES),
        "topic_kinds": list(TOPIC_KINDS),
        "group_width": len(str(spec.groups)) + 1,
        "user_width": len(str(spec.students)) + 1,
        "level_width": len(str(spec.levels)) + 1,
        "topic_width": len(str(spec.topics)) + 1,
        **{f"salt{n}": _salt(spec.seed, n) for n in range(1, 9)},
    }


# Random bits: `(h >> k) & mask` takes disjoint slices of one 64-bit hash, so a row needs few
# hash calls; OFFSET 0 keeps each subquery from being flattened, which would otherwise make
# PostgreSQL recompute a hash at every place its column is used.
_DIRECTORY: tuple[LiteralString, ...] = (
    """
    INSERT INTO levels (key, id, name, position)
    SELECT n, 'level-' || lpad(n::text, %(level_width)s, '0'),
           coalesce((%(level_names)s::text[])[n], 'Уровень ' || n), n
    FROM generate_series(1, %(levels)s) AS n
    """,
    """
    INSERT INTO topics (key, id, name, level_key)
    SELECT t.n, 'topic-' || lpad(t.n::text, %(topic_width)s, '0'),
           l.name || '. '
           || (%(topic_kinds)s::text[])[1 + (t.rank - 1) %% cardinality(%(topic_kinds)s::text[])]
           || CASE WHEN t.rank > cardinality(%(topic_kinds)s::text[])
                   THEN ' ' || (1 + (t.rank - 1) / cardinality(%(topic_kinds)s::text[]))
                   ELSE '' END,
           t.level_key
    FROM (
        SELECT n, level_key, row_number() OVER (PARTITION BY level_key ORDER BY n) AS rank
        FROM (SELECT n, 1 + ((n - 1) * %(levels)s) / %(topics)s AS level_key
              FROM generate_series(1, %(topics)s) AS n) AS numbered
    ) AS t
    JOIN levels l ON l.key = t.level_key
    """,
    """
    INSERT INTO groups (key, id, name)
    SELECT n, 'group-' || lpad(n::text, %(group_width)s, '0'),
           (%(grades)s::int[])[1 + ((n - 1) / cardinality(%(letters)s::text[]))
                                   %% cardinality(%(grades)s::int[])]
           || (%(letters)s::text[])[1 + (n - 1) %% cardinality(%(letters)s::text[])]
           || CASE WHEN %(groups)s > cardinality(%(grades)s::int[]) * cardinality(%(letters)s::text[])
                   THEN ' (школа №' || (1 + (n - 1) / (cardinality(%(grades)s::int[])
                                                        * cardinality(%(letters)s::text[]))) || ')'
                   ELSE '' END
    FROM generate_series(1, %(groups)s) AS n
    """,
    """
    CREATE TEMP TABLE seed_students ON COMMIT DROP AS
    SELECT key, g1,
           CASE WHEN %(groups)s > 1 AND mod((h1 >> 32) & 4294967295, 100) < %(second_percent)s
                THEN 1 + mod(g1 + mod(h2 & 4294967295, greatest(%(groups)s - 1, 1)), %(groups)s)
           END AS g2,
           450 + mod((h2 >> 32) & 65535, 500) AS ability,
           female, surname, first_name
    FROM (
        SELECT key, h1, h2,
               1 + mod(h1 & 4294967295, %(groups)s) AS g1,
               (h3 & 1) = 1 AS female,
               1 + mod((h3 >> 8) & 65535, cardinality(%(surnames)s::text[])) AS surname,
               1 + mod((h3 >> 24) & 65535, cardinality(%(male_names)s::text[])) AS first_name
        FROM (SELECT key, hashint8extended(key, %(salt1)s) AS h1,
                     hashint8extended(key, %(salt2)s) AS h2, hashint8extended(key, %(salt3)s) AS h3
              FROM generate_series(1, %(students)s) AS key OFFSET 0) AS hashed
        OFFSET 0
    ) AS s
    """,
    "ALTER TABLE seed_students ADD PRIMARY KEY (key)",
    "ANALYZE seed_students",
    """
    INSERT INTO users (key, id, display_name)
    SELECT key, 'user-' || lpad(key::text, %(user_width)s, '0'),
           CASE WHEN female
                THEN (%(surnames)s::text[])[surname] || 'а ' || (%(female_names)s::text[])[first_name]
                ELSE (%(surnames)s::text[])[surname] || ' ' || (%(male_names)s::text[])[first_name]
           END
    FROM seed_students
    """,
    """
    INSERT INTO user_groups (user_key, group_key)
    SELECT key, g1 FROM seed_students
    UNION ALL
    SELECT key, g2 FROM seed_students WHERE g2 IS NOT NULL
    """,
    # Keys were given explicitly: move the identities past them for later ingestion.
    """
    SELECT setval(pg_get_serial_sequence('groups', 'key'), %(groups)s),
           setval(pg_get_serial_sequence('users', 'key'), %(students)s),
           setval(pg_get_serial_sequence('levels', 'key'), %(levels)s),
           setval(pg_get_serial_sequence('topics', 'key'), %(topics)s)
    """,
)

_ATTEMPTS: LiteralString = """
INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct, score,
                      hints_used, time_spent_ms, attempted_at)
SELECT %(event_prefix)s || lpad(i::text, %(event_width)s, '0'), user_key, group_key, topic_key,
       'task-' || topic_key || '-' || (1 + mod((h2 >> 48) & 32767, %(tasks)s)),
       correct,
       CASE WHEN correct THEN greatest(10 - 2 * hints, 4) ELSE mod((h2 >> 32) & 65535, 3) END,
       hints,
       8000 + mod((h3 >> 32) & 4294967295, 90000) + hints * 15000
            + CASE WHEN correct THEN 0 ELSE 10000 END,
       to_timestamp(CASE WHEN moment > %(until_epoch)s THEN moment - 365 * 86400 ELSE moment END)
FROM (
    SELECT i, h2, h3, user_key, group_key, topic_key, correct,
           CASE WHEN correct THEN CASE WHEN r_hints < 70 THEN 0 WHEN r_hints < 92 THEN 1 ELSE 2 END
                ELSE CASE WHEN r_hints < 35 THEN 0 WHEN r_hints < 65 THEN 1
                          WHEN r_hints < 85 THEN 2 ELSE 3 END
           END AS hints,
           -- a day of the last 365, at school hours (08:00-21:00 UTC), in epoch seconds
           %(day0_epoch)s + 28800 + mod((h3 >> 16) & 65535, 46800)
               - 86400 * mod(h3 & 65535, 365) AS moment
    FROM (
        SELECT a.i, a.h2, a.h3, st.key AS user_key, a.topic_key,
               CASE WHEN st.g2 IS NOT NULL AND a.h2 < 0 THEN st.g2 ELSE st.g1 END AS group_key,
               mod(a.h2 & 65535, 1000)
                   < st.ability - mod(hashint8extended(a.topic_key, %(salt7)s) & 65535, 200)
                   AS correct,
               mod((a.h2 >> 16) & 65535, 100) AS r_hints
        FROM (
            SELECT i, h2, h3,
                   1 + mod(h1 & 4294967295, %(students)s) AS student,
                   1 + mod((h1 >> 32) & 4294967295, %(topics)s) AS topic_key
            FROM (SELECT i, hashint8extended(i, %(salt4)s) AS h1,
                         hashint8extended(i, %(salt5)s) AS h2,
                         hashint8extended(i, %(salt6)s) AS h3
                  FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i OFFSET 0) AS hashed
            OFFSET 0
        ) AS a
        JOIN seed_students st ON st.key = a.student
        OFFSET 0
    ) AS b
    OFFSET 0
) AS c
"""
