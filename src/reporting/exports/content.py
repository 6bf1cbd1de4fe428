"""What goes into a report: SQL over the group's attempts in the period and topic filter.

Every function runs inside the worker's read transaction, already switched to the requester's
stored scope (`db.engine.apply_scope`), so row-level security applies to exports as it does to
the API. All aggregation happens in PostgreSQL; the per-(student, topic) rows are streamed
through a server-side cursor, never held whole in memory.

Text is ordered with COLLATE "C" (code-point order): the same on every server and in Python.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from reporting.exports.render.cells import FORMULA_START
from reporting.exports.schemas import ExportFilters

_FETCH_ROWS = 2000


@dataclass(frozen=True, slots=True)
class ReportHeader:
    group_id: str
    group_name: str
    topic_names: list[str]  # of the topic filter, in its order; empty = every topic
    data_as_of: datetime | None  # the group's newest materialized_stats computed_at


@dataclass(frozen=True, slots=True)
class Kpis:
    """CONTRACT §2 metrics over the filtered attempts."""

    total_attempts: int
    total_users: int
    avg_accuracy: float
    avg_score: float
    hint_usage_rate: float
    avg_hints: float
    avg_time_seconds: float


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One (student, topic) line of the CSV/XLSX table, in the header's column order."""

    group_id: str
    group_name: str
    user_id: str
    display_name: str
    topic_id: str
    topic_name: str
    level_id: str
    attempts: int
    correct: int
    accuracy: Decimal  # correct / attempts, rounded half away from zero to 4 places
    score: float
    hints_used: int
    avg_time_seconds: float  # mean of time_spent_ms / 1000
    first_attempt_at: datetime
    last_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class TopicSummary:
    topic_id: str
    topic_name: str
    level_id: str
    level_name: str
    kpis: Kpis


@dataclass(frozen=True, slots=True)
class StudentSummary:
    user_id: str
    display_name: str
    attempts: int
    correct: int
    accuracy: float
    score: float
    hints_used: int
    avg_time_seconds: float
    last_attempt_at: datetime


class GroupNotVisible(Exception):
    """The group is unknown or outside the requester's stored scope."""


def prepare_read(conn: psycopg.Connection) -> None:
    """Inside the export's read transaction: room for its one big aggregate and sort.

    A 200,000-row table aggregates and sorts in memory with 64 MB instead of spilling tens of
    megabytes to disk with the default 4 MB; a worker runs one export at a time, so this is
    bounded, and SET LOCAL ends with the transaction.
    """
    conn.execute("SET LOCAL work_mem = '64MB'")


def read_header(conn: psycopg.Connection, group_id: str, filters: ExportFilters) -> ReportHeader:
    row = conn.execute(
        "SELECT g.name, (SELECT max(m.computed_at) FROM materialized_stats m"
        " WHERE m.group_id = g.id) FROM groups g WHERE g.id = %s",
        (group_id,),
    ).fetchone()
    if row is None:
        raise GroupNotVisible(f"the group {group_id!r} is unknown or outside the requester's scope")
    names: dict[str, str] = {}
    if filters.topic_ids:
        names = dict(
            conn.execute(
                "SELECT id, name FROM topics WHERE id = ANY(%s)", (filters.topic_ids,)
            ).fetchall()
        )
    return ReportHeader(
        group_id=group_id,
        group_name=row[0],
        topic_names=[names.get(topic_id, topic_id) for topic_id in filters.topic_ids],
        data_as_of=row[1],
    )


def _base(group_id: str, filters: ExportFilters) -> tuple[sql.Composed, dict[str, Any]]:
    """`base`: one row per (student, topic) of the group with attempts in the filter."""
    bounds = filters.period.bounds()
    params: dict[str, Any] = {
        "group_id": group_id,
        "starts_at": bounds.starts_at,
        "ends_before": bounds.ends_before,
        "topic_ids": filters.topic_ids,
    }
    topic_filter = (
        sql.SQL("AND a.topic_key IN (SELECT key FROM topics WHERE id = ANY(%(topic_ids)s))")
        if filters.topic_ids
        else sql.SQL("")
    )
    query = sql.SQL(
        """
        WITH base AS (
            SELECT a.user_key, a.topic_key,
                   count(*) AS attempts,
                   count(*) FILTER (WHERE a.is_correct) AS correct,
                   sum(a.score) AS score,
                   sum(a.hints_used) AS hints_used,
                   count(*) FILTER (WHERE a.hints_used > 0) AS hinted,
                   sum(a.time_spent_ms) AS time_ms,
                   min(a.attempted_at) AS first_at,
                   max(a.attempted_at) AS last_at
            FROM attempts a
            -- Only students the requester may see (RLS on users), so the KPIs and the
            -- tables always describe the same people.
            JOIN users u ON u.key = a.user_key
            WHERE a.group_key = (SELECT key FROM groups WHERE id = %(group_id)s)
              AND a.attempted_at >= %(starts_at)s AND a.attempted_at < %(ends_before)s
              {topic_filter}
            GROUP BY a.user_key, a.topic_key
        )
        """
    ).format(topic_filter=topic_filter)
    return query, params


_TABLE_FROM = """
        FROM base b
        JOIN users u ON u.key = b.user_key
        JOIN topics t ON t.key = b.topic_key
        JOIN levels l ON l.key = t.level_key
        CROSS JOIN (SELECT id, name FROM groups WHERE id = %(group_id)s) g
        ORDER BY u.display_name COLLATE "C", u.id, t.id
"""


def iter_rows(
    conn: psycopg.Connection, group_id: str, filters: ExportFilters
) -> Iterator[ExportRow]:
    """The table with typed values (for XLSX), ordered by display_name, user_id, topic_id;
    streamed through a server-side cursor."""
    base, params = _base(group_id, filters)
    query = base + sql.SQL(
        """
        SELECT g.id, g.name, u.id, u.display_name, t.id, t.name, l.id,
               b.attempts, b.correct, round(b.correct::numeric / b.attempts, 4),
               b.score, b.hints_used, b.time_ms::float8 / b.attempts / 1000,
               b.first_at, b.last_at
        """
        + _TABLE_FROM
    )
    with conn.cursor(name="export_rows") as cur:
        cur.itersize = _FETCH_ROWS
        cur.execute(query, params)
        for row in cur:
            yield ExportRow(*row)


def _inert(column: str) -> sql.Composable:
    """SQL for a text cell neutralised against formula injection (the rule of render/cells.py)."""
    starts = sql.SQL(", ").join(sql.Literal(ch) for ch in FORMULA_START)
    return sql.SQL(
        "CASE WHEN left({name}, 1) IN ({starts}) THEN {quote} || {name} ELSE {name} END"
    ).format(name=sql.SQL(column), starts=starts, quote=sql.Literal("'"))


def _utc_text(column: str) -> sql.Composable:
    """SQL for ISO 8601 UTC text: 2026-09-01T10:00:00Z, microseconds only when there are some."""
    return sql.SQL(
        "to_char({name} AT TIME ZONE 'UTC', {seconds})"
        " || CASE WHEN date_trunc('second', {name}) = {name} THEN ''"
        " ELSE to_char({name} AT TIME ZONE 'UTC', '.US') END || 'Z'"
    ).format(name=sql.SQL(column), seconds=sql.Literal('YYYY-MM-DD"T"HH24:MI:SS'))


_TEXT_COLUMNS = ("g.id", "g.name", "u.id", "u.display_name", "t.id", "t.name", "l.id")


def iter_csv_records(
    conn: psycopg.Connection, group_id: str, filters: ExportFilters
) -> Iterator[list[tuple[str, ...]]]:
    """The same table as CSV cells, in batches. PostgreSQL formats every cell (text
    neutralised, `.` decimals, accuracy rounded to 4 places as CONTRACT §6 says, score and
    avg_time_seconds unrounded: numeric text, which never takes an exponent (float8's `5e-05`)
    and keeps 15+ significant digits; ISO UTC times), so Python only writes them out."""
    base, params = _base(group_id, filters)
    cells = sql.SQL(", ").join(
        [
            *(_inert(column) for column in _TEXT_COLUMNS),
            sql.SQL("b.attempts::text"),
            sql.SQL("b.correct::text"),
            sql.SQL("round(b.correct::numeric / b.attempts, 4)::text"),
            sql.SQL("trim_scale(b.score::numeric)::text"),
            sql.SQL("b.hints_used::text"),
            sql.SQL("trim_scale(b.time_ms::numeric / b.attempts / 1000)::text"),
            _utc_text("b.first_at"),
            _utc_text("b.last_at"),
        ]
    )
    query = base + sql.SQL("SELECT ") + cells + sql.SQL(_TABLE_FROM)
    with conn.cursor(name="export_csv") as cur:
        cur.execute(query, params)
        while batch := cur.fetchmany(_FETCH_ROWS):
            yield batch


def _kpis(row: tuple[Any, ...]) -> Kpis:
    return Kpis(
        total_attempts=int(row[0] or 0),
        total_users=int(row[1] or 0),
        avg_accuracy=float(row[2] or 0.0),
        avg_score=float(row[3] or 0.0),
        hint_usage_rate=float(row[4] or 0.0),
        avg_hints=float(row[5] or 0.0),
        avg_time_seconds=float(row[6] or 0.0),
    )


def read_kpis(conn: psycopg.Connection, group_id: str, filters: ExportFilters) -> Kpis:
    """The group's KPIs: each learner weighs the same in avg_accuracy and avg_score."""
    base, params = _base(group_id, filters)
    # One row per student carrying that student's totals; the attempt sums stay per row, the
    # per-student means take each student once (window sums over their topics).
    query = base + sql.SQL(
        """
        , per_user AS (
            SELECT user_key, attempts, hinted, hints_used, time_ms,
                   sum(attempts) OVER w AS user_attempts, sum(correct) OVER w AS user_correct,
                   sum(score) OVER w AS user_score,
                   row_number() OVER w AS nth
            FROM base WINDOW w AS (PARTITION BY user_key)
        )
        SELECT sum(attempts)::bigint, count(*) FILTER (WHERE nth = 1),
               avg(user_correct::float8 / user_attempts) FILTER (WHERE nth = 1),
               avg(user_score) FILTER (WHERE nth = 1),
               sum(hinted)::float8 / nullif(sum(attempts), 0),
               sum(hints_used)::float8 / nullif(sum(attempts), 0),
               sum(time_ms)::float8 / nullif(sum(attempts), 0) / 1000
        FROM per_user
        """
    )
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return _kpis(row)


def read_topic_summaries(
    conn: psycopg.Connection, group_id: str, filters: ExportFilters
) -> list[TopicSummary]:
    """Per topic with attempts: its KPIs (base is per student and topic, so means are per
    student). Ordered by level position, topic name, topic id."""
    base, params = _base(group_id, filters)
    query = base + sql.SQL(
        """
        SELECT t.id, t.name, l.id, l.name,
               sum(b.attempts)::bigint, count(*),
               avg(b.correct::float8 / b.attempts), avg(b.score),
               sum(b.hinted)::float8 / sum(b.attempts),
               sum(b.hints_used)::float8 / sum(b.attempts),
               sum(b.time_ms)::float8 / sum(b.attempts) / 1000
        FROM base b
        JOIN topics t ON t.key = b.topic_key
        JOIN levels l ON l.key = t.level_key
        GROUP BY t.id, t.name, l.id, l.name, l.position
        ORDER BY l.position, t.name COLLATE "C", t.id
        """
    )
    return [
        TopicSummary(
            topic_id=row[0],
            topic_name=row[1],
            level_id=row[2],
            level_name=row[3],
            kpis=_kpis(row[4:]),
        )
        for row in conn.execute(query, params).fetchall()
    ]


def read_student_summaries(
    conn: psycopg.Connection, group_id: str, filters: ExportFilters
) -> list[StudentSummary]:
    """Per student with attempts, ordered by display_name, user_id."""
    base, params = _base(group_id, filters)
    query = base + sql.SQL(
        """
        SELECT u.id, u.display_name, sum(b.attempts)::bigint, sum(b.correct)::bigint,
               sum(b.correct)::float8 / sum(b.attempts), sum(b.score),
               sum(b.hints_used)::bigint, sum(b.time_ms)::float8 / sum(b.attempts) / 1000,
               max(b.last_at)
        FROM base b
        JOIN users u ON u.key = b.user_key
        GROUP BY u.id, u.display_name
        ORDER BY u.display_name COLLATE "C", u.id
        """
    )
    return [StudentSummary(*row) for row in conn.execute(query, params).fetchall()]
