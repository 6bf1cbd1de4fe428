"""Row-level security inside PostgreSQL: a query that forgot its filter still sees only the
caller's rows (CONTRACT §5), whichever way the scope is applied."""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from reporting.auth.scope import Scope
from reporting.db.engine import API_ROLE, Database, apply_scope
from tests.builders import (
    Attempt,
    Ranking,
    make_attempts,
    make_group,
    make_leaderboard,
    make_level,
    make_progress,
    make_stat,
    make_topic,
    make_user,
)


@dataclass(frozen=True)
class Tenant:
    group_id: str
    user_id: str
    teacher: str


@dataclass(frozen=True)
class School:
    own: Tenant
    foreign: Tenant
    shared_user: str  # a learner of both groups
    level_id: str
    topic_id: str


def _tenant(conn: psycopg.Connection, tag: str, level_id: str, topic_id: str) -> Tenant:
    tenant = Tenant(f"g-{tag}", f"u-{tag}", f"teacher-{tag}")
    make_group(conn, tenant.group_id)
    make_user(conn, tenant.user_id, [tenant.group_id])
    make_attempts(conn, [Attempt(tenant.user_id, tenant.group_id, topic_id)])
    make_stat(conn, "group", tenant.group_id)
    make_stat(conn, "group_level", f"{tenant.group_id}:{level_id}")
    make_stat(conn, "group_topic", f"{tenant.group_id}:{topic_id}")
    make_progress(conn, tenant.user_id)
    make_leaderboard(conn, "group", tenant.group_id, [Ranking(1, tenant.user_id, "x")])
    conn.execute(
        "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters, format)"
        " VALUES (%s, '{}', %s, '{}', 'csv')",
        (tenant.teacher, tenant.group_id),
    )
    return tenant


def _school(conn: psycopg.Connection) -> School:
    tag = uuid.uuid4().hex[:8]
    level_id, topic_id = f"l-{tag}", f"t-{tag}"
    make_level(conn, level_id)
    make_topic(conn, topic_id, level_id)
    make_stat(conn, "level", level_id)
    make_stat(conn, "topic", topic_id)
    # The foreign learner leads: a teacher of the other group sees their own at rank 2.
    make_leaderboard(
        conn,
        "level",
        level_id,
        [Ranking(1, f"u-foreign-{tag}", "x"), Ranking(2, f"u-own-{tag}", "y")],
    )
    own = _tenant(conn, f"own-{tag}", level_id, topic_id)
    foreign = _tenant(conn, f"foreign-{tag}", level_id, topic_id)
    shared_user = f"u-both-{tag}"
    make_user(conn, shared_user, [own.group_id, foreign.group_id])
    return School(own, foreign, shared_user, level_id, topic_id)


def _teacher(tenant: Tenant) -> Scope:
    return Scope(role="teacher", sub=tenant.teacher, group_ids=frozenset({tenant.group_id}))


@pytest.fixture
def school(conn: psycopg.Connection) -> Iterator[School]:
    yield _school(conn)


def _select_all(conn: psycopg.Connection, table: str) -> list[dict[str, object]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT * FROM {table}").fetchall()


def _keys(conn: psycopg.Connection, table: str, *ids: str) -> set[int]:
    rows = conn.execute(f"SELECT key FROM {table} WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return {int(row[0]) for row in rows}


def test_teacher_scope_sees_only_own_rows_in_every_tenant_table(
    conn: psycopg.Connection, school: School
) -> None:
    own, foreign = school.own, school.foreign
    own_group_keys = _keys(conn, "groups", own.group_id)
    own_user_keys = _keys(conn, "users", own.user_id, school.shared_user)
    foreign_only_user_keys = _keys(conn, "users", foreign.user_id)

    apply_scope(conn, _teacher(own))
    assert conn.execute("SELECT current_user").fetchone() == (API_ROLE,)
    groups = _select_all(conn, "groups")
    users = _select_all(conn, "users")
    user_groups = _select_all(conn, "user_groups")
    attempts = _select_all(conn, "attempts")
    stats = _select_all(conn, "materialized_stats")
    boards = _select_all(conn, "leaderboards")
    summaries = _select_all(conn, "progress_summary")
    exports = _select_all(conn, "report_exports")

    assert {g["id"] for g in groups} == {own.group_id}
    assert {u["key"] for u in users} == own_user_keys
    assert not foreign_only_user_keys & {u["key"] for u in users}
    assert {ug["group_key"] for ug in user_groups} == own_group_keys
    assert attempts and {a["group_key"] for a in attempts} == own_group_keys
    assert {s["group_id"] for s in stats} == {None, own.group_id}
    assert {(s["type"], s["entity_id"]) for s in stats} >= {
        ("group", own.group_id),
        ("level", school.level_id),
        ("topic", school.topic_id),
    }
    # Boards naming other groups' learners (global, level) are not rows a teacher reads whole:
    # reporting_visible_board gives them filtered (below).
    assert {(b["scope"], b["scope_id"]) for b in boards} == {("group", own.group_id)}
    visible = conn.execute(
        "SELECT rankings FROM reporting_visible_board('level', %s)", (school.level_id,)
    ).fetchone()
    assert visible is not None
    assert [(r["rank"], r["user_id"]) for r in visible[0]] == [(2, own.user_id)]
    foreign_board = conn.execute(
        "SELECT count(*) FROM reporting_visible_board('group', %s)", (foreign.group_id,)
    ).fetchone()
    assert foreign_board == (0,)
    assert {s["user_id"] for s in summaries} == {own.user_id}
    assert {e["requested_by"] for e in exports} == {own.teacher}
    assert {e["group_id"] for e in exports} == {own.group_id}


def test_a_teacher_sees_their_exports_only_of_groups_still_theirs(
    conn: psycopg.Connection, school: School
) -> None:
    own = school.own
    moved = Scope(role="teacher", sub=own.teacher, group_ids=frozenset({school.foreign.group_id}))

    apply_scope(conn, moved)

    assert _select_all(conn, "report_exports") == []
    # The hourly quota still counts it: it is the requester's, whatever groups the token names.
    used = conn.execute(
        "SELECT used FROM reporting_export_quota(%s, interval '1 hour')", (own.teacher,)
    ).fetchone()
    assert used == (1,)


def test_filters_naming_foreign_rows_still_find_nothing(
    conn: psycopg.Connection, school: School
) -> None:
    foreign = school.foreign

    apply_scope(conn, _teacher(school.own))

    checks = {
        "groups": ("SELECT count(*) FROM groups WHERE id = %s", foreign.group_id),
        "users": ("SELECT count(*) FROM users WHERE id = %s", foreign.user_id),
        "stats": ("SELECT count(*) FROM materialized_stats WHERE group_id = %s", foreign.group_id),
        "boards": ("SELECT count(*) FROM leaderboards WHERE scope_id = %s", foreign.group_id),
        "summaries": ("SELECT count(*) FROM progress_summary WHERE user_id = %s", foreign.user_id),
        "exports": ("SELECT count(*) FROM report_exports WHERE requested_by = %s", foreign.teacher),
        # It reads past row-level security (the requester's exports of groups no longer theirs
        # count too), but only for the caller's own sub.
        "quota": (
            "SELECT used FROM reporting_export_quota(%s, interval '1 hour')",
            foreign.teacher,
        ),
    }
    counts = {name: conn.execute(query, (arg,)).fetchone() for name, (query, arg) in checks.items()}
    assert counts == dict.fromkeys(checks, (0,))


def test_the_policies_read_the_scope_once_per_query_not_once_per_row(
    conn: psycopg.Connection, school: School
) -> None:
    # 200 more rows of each kind in the foreign group: each is checked against the scope.
    own, foreign = school.own, school.foreign
    for n in range(200):
        make_stat(conn, "group_topic", f"{foreign.group_id}:extra-{n}")
        conn.execute(
            "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters, format)"
            " VALUES (%s, '{}', %s, '{}', 'csv')",
            (own.teacher, foreign.group_id),
        )
    conn.execute("SET LOCAL track_functions = 'all'")  # counts calls of SQL functions
    apply_scope(conn, _teacher(own))

    def scope_reads(query: str) -> int:
        def calls() -> int:
            row = conn.execute(
                "SELECT coalesce(pg_stat_get_xact_function_calls('reporting_scope_groups()'"
                "::regprocedure), 0)"
            ).fetchone()
            assert row is not None
            return int(row[0])

        before = calls()
        conn.execute(query).fetchall()
        return calls() - before

    reads = {
        table: scope_reads(f"SELECT * FROM {table}")
        for table in ("groups", "materialized_stats", "leaderboards", "report_exports")
    }

    assert reads == dict.fromkeys(reads, 1)


def test_admin_scope_sees_both_tenants(conn: psycopg.Connection, school: School) -> None:
    apply_scope(conn, Scope(role="admin", sub="admin-1"))

    groups = {g["id"] for g in _select_all(conn, "groups")}
    summaries = {s["user_id"] for s in _select_all(conn, "progress_summary")}

    assert {school.own.group_id, school.foreign.group_id} <= groups
    assert {school.own.user_id, school.foreign.user_id} <= summaries


def test_the_api_role_without_any_scope_sees_no_tenant_rows(
    conn: psycopg.Connection, school: School
) -> None:
    conn.execute(f"SET LOCAL ROLE {API_ROLE}")

    counts = [
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        for table in ("groups", "users", "user_groups", "attempts", "progress_summary")
    ]
    group_rows = conn.execute(
        "SELECT count(*) FROM materialized_stats WHERE group_id IS NOT NULL"
    ).fetchone()

    assert counts == [(0,)] * 5
    assert group_rows == (0,)


def test_teacher_scope_may_neither_write_stats_nor_read_ticks_nor_request_foreign_exports(
    conn: psycopg.Connection, school: School
) -> None:
    apply_scope(conn, _teacher(school.own))
    conn.execute("SAVEPOINT before_write")

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM materialized_stats")
    conn.execute("ROLLBACK TO SAVEPOINT before_write")
    # Nor read the workers' log (school-wide counts in its details).
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT details FROM worker_ticks")
    conn.execute("ROLLBACK TO SAVEPOINT before_write")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        conn.execute(
            "INSERT INTO report_exports (requested_by, requester_scope, group_id, filters, format)"
            " VALUES (%s, %s, %s, '{}', 'csv')",
            (school.own.teacher, Jsonb({}), school.foreign.group_id),
        )


async def test_database_scoped_applies_rls_and_leaks_nothing_to_the_next_user(
    fresh_db_url: str,
) -> None:
    with psycopg.connect(fresh_db_url) as setup:
        school = _school(setup)
    db = Database(fresh_db_url, min_size=1, max_size=1)  # one connection: the next user is us
    await db.open()
    try:
        async with db.scoped(_teacher(school.own)) as conn:
            rows = await (await conn.execute("SELECT id FROM groups ORDER BY id")).fetchall()
            stats = await (
                await conn.execute("SELECT DISTINCT group_id FROM materialized_stats")
            ).fetchall()
        async with db.pool.connection() as conn:
            after = await (
                await conn.execute(
                    "SELECT current_user, current_setting('app.group_ids', true),"
                    " (SELECT count(*) FROM groups)"
                )
            ).fetchone()
    finally:
        await db.close()

    assert rows == [(school.own.group_id,)]
    assert {row[0] for row in stats} == {None, school.own.group_id}
    assert after is not None
    assert after[0] != API_ROLE
    assert after[1] in ("", None)
    assert after[2] == 2


def test_scope_settings_are_the_tokens_groups(conn: psycopg.Connection) -> None:
    scope = Scope(role="teacher", sub="t", group_ids=frozenset({"b", "a"}))

    apply_scope(conn, scope)

    row = conn.execute(
        "SELECT current_setting('app.role'), current_setting('app.sub'),"
        " current_setting('app.group_ids')"
    ).fetchone()
    assert row is not None
    assert (row[0], row[1], json.loads(row[2])) == ("teacher", "t", ["a", "b"])
