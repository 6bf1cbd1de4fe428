"""`PUT /ingest/directory` and `POST /ingest/attempts` over the ASGI app, on a database of their own."""

import json
import re
from typing import Any

import httpx
import psycopg
import pytest

from reporting.db.channels import ATTEMPTS_INGESTED
from reporting.ingest.copy import notify_payloads
from tests.conftest import TokenFactory
from tests.ingest.conftest import DIRECTORY, attempt, count

pytestmark = pytest.mark.usefixtures("school")


def _metric(body: str, outcome: str) -> float:
    match = re.search(rf'^attempts_ingested_total{{outcome="{outcome}"}} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


async def test_attempts_are_stored_with_their_directory_keys(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    batch = [
        attempt("ev-1"),
        attempt("ev-2", user_id="u-petr", group_id="g-7b", topic_id="t-mul", is_correct=False),
        attempt("ev-3", attempted_at="2026-09-02T10:00:00"),  # no zone: UTC
    ]
    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 3, "duplicates": 0}
    with psycopg.connect(fresh_db_url) as conn:
        rows = conn.execute(
            "SELECT a.event_id, u.id, g.id, t.id, a.is_correct, a.score, a.hints_used,"
            " a.time_spent_ms, a.attempted_at AT TIME ZONE 'UTC'"
            " FROM attempts a JOIN users u ON u.key = a.user_key"
            " JOIN groups g ON g.key = a.group_key JOIN topics t ON t.key = a.topic_key"
            " ORDER BY a.event_id"
        ).fetchall()
    assert [r[:5] for r in rows] == [
        ("ev-1", "u-anna", "g-7a", "t-add", True),
        ("ev-2", "u-petr", "g-7b", "t-mul", False),
        ("ev-3", "u-anna", "g-7a", "t-add", True),
    ]
    assert rows[0][5:8] == (8.5, 1, 42_000)
    assert rows[2][8].isoformat() == "2026-09-02T10:00:00"


async def test_a_repeated_event_is_counted_once(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    before = (await ingest_api.get("/metrics")).text
    batch = {"attempts": [attempt("ev-1"), attempt("ev-2")]}

    first = await ingest_api.post("/ingest/attempts", json=batch, headers=service_headers)
    again = await ingest_api.post("/ingest/attempts", json=batch, headers=service_headers)
    # The same event twice in one batch, even with other content, is one event.
    twice = await ingest_api.post(
        "/ingest/attempts",
        json={"attempts": [attempt("ev-3"), attempt("ev-3", score=1.0)]},
        headers=service_headers,
    )

    assert first.json() == {"inserted": 2, "duplicates": 0}
    assert again.json() == {"inserted": 0, "duplicates": 2}
    assert twice.json() == {"inserted": 1, "duplicates": 1}
    assert count(fresh_db_url) == 3
    after = (await ingest_api.get("/metrics")).text
    assert _metric(after, "inserted") - _metric(before, "inserted") == 3
    assert _metric(after, "duplicate") - _metric(before, "duplicate") == 3


async def test_the_first_copy_of_an_event_repeated_in_a_batch_is_the_one_kept(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    # Forty events, every fourth sent twice with different scores: whichever order the database
    # meets them in, the copy kept is the first one sent.
    firsts = [attempt(f"dd{i:02}", score=1.0) for i in range(40)]
    repeats = [attempt(f"dd{i:02}", score=2.0) for i in range(0, 40, 4)]
    batch = [*firsts[:20], *repeats[::2], *firsts[20:], *repeats[1::2]]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.json() == {"inserted": 40, "duplicates": 10}
    with psycopg.connect(fresh_db_url) as conn:
        scores = dict(conn.execute("SELECT event_id, score FROM attempts").fetchall())
    first_sent: dict[str, float] = {}
    for sent in batch:
        first_sent.setdefault(sent["event_id"], sent["score"])
    assert scores == first_sent
    assert sorted(scores.values()).count(2.0) == 2  # dd24 and dd32 came first as repeats


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hints_used": -1}, "hints_used"),
        ({"time_spent_ms": -5}, "time_spent_ms"),
        ({"is_correct": "yes"}, "is_correct"),
        ({"hints_used": 1.5}, "hints_used"),
        ({"score": "8"}, "score"),
        ({"score": 1e308}, "score"),  # two of them overflowed every later tick's sums
        ({"score": -2e9}, "score"),
        ({"attempted_at": "yesterday"}, "attempted_at"),
        ({"user_id": ""}, "user_id"),
        ({"task_id": "a\u0000b"}, "task_id"),
        ({"event_id": None}, "event_id"),
    ],
)
async def test_one_bad_record_rejects_the_batch_and_names_its_index(
    ingest_api: httpx.AsyncClient,
    service_headers: dict[str, str],
    fresh_db_url: str,
    change: dict[str, Any],
    field: str,
) -> None:
    batch = [attempt("ev-1"), attempt("ev-2"), {**attempt("ev-3"), **change}]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["detail"].startswith("1 attempt is not valid (index 2)")
    assert [e["loc"] for e in problem["errors"]] == [["attempts", 2, field]]
    assert count(fresh_db_url) == 0


async def test_a_missing_field_is_named(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    bad = attempt("ev-2")
    del bad["topic_id"]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": [attempt("ev-1"), bad]}, headers=service_headers
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["attempts", 1, "topic_id"]


async def test_unknown_ids_reject_the_batch_and_name_each(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    batch = [
        attempt("ev-1"),
        attempt("ev-2", user_id="u-nobody"),
        attempt("ev-3"),
        attempt("ev-4", group_id="g-none", topic_id="t-none"),
    ]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"].startswith("2 attempts reference unknown ids (indexes 1, 3)")
    assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
        (["attempts", 1, "user_id"], "unknown user id 'u-nobody'"),
        (["attempts", 3, "group_id"], "unknown group id 'g-none'"),
        (["attempts", 3, "topic_id"], "unknown topic id 't-none'"),
    ]
    assert count(fresh_db_url) == 0


async def test_malformed_attempts_and_unknown_ids_are_named_in_one_answer(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    """A platform fixes a rejected batch in one go: the well-formed attempts of a batch with
    malformed ones have their ids checked too."""
    batch = [
        attempt("ev-1", user_id="u-nobody"),
        {**attempt("ev-2"), "score": "x"},
        attempt("ev-3"),
        attempt("ev-4", topic_id="t-none"),
    ]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"] == (
        "3 attempts are not valid or reference unknown ids (indexes 0, 1, 3); nothing was written."
    )
    assert [(e["loc"], e["type"]) for e in problem["errors"]] == [
        (["attempts", 0, "user_id"], "unknown_reference"),
        (["attempts", 1, "score"], "float_type"),
        (["attempts", 3, "topic_id"], "unknown_reference"),
    ]
    assert count(fresh_db_url) == 0
    # Malformed attempts alone: named as before, without a word about ids.
    alone = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch[1:3]}, headers=service_headers
    )
    assert alone.json()["detail"].startswith("1 attempt is not valid (index 0)")


async def test_an_oversized_batch_is_refused_with_a_clear_detail(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    batch = [attempt(f"ev-{i}") for i in range(10_001)]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "at most 10,000 attempts" in detail
    assert "this one has 10,001" in detail
    assert count(fresh_db_url) == 0


async def test_a_full_batch_of_ten_thousand_goes_in(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    users = [u["id"] for u in DIRECTORY["users"]]
    batch = [
        attempt(f"ev-{i}", user_id=users[i % 3], group_id="g-7b" if i % 3 == 2 else "g-7a")
        for i in range(10_000)
    ]

    response = await ingest_api.post(
        "/ingest/attempts", json={"attempts": batch}, headers=service_headers
    )

    assert response.json() == {"inserted": 10_000, "duplicates": 0}
    assert count(fresh_db_url) == 10_000


async def test_a_body_that_is_not_a_batch_is_refused(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    not_json = await ingest_api.post(
        "/ingest/attempts", content=b"{not json", headers=service_headers
    )
    no_list = await ingest_api.post("/ingest/attempts", json={"rows": []}, headers=service_headers)

    assert not_json.status_code == 422
    assert not_json.json()["detail"].startswith("The body is not valid JSON")
    assert no_list.status_code == 422
    assert no_list.json()["errors"][0]["loc"] == ["attempts"]


async def test_new_attempts_notify_their_groups_at_commit(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {ATTEMPTS_INGESTED}")
        await ingest_api.post(
            "/ingest/attempts",
            json={
                "attempts": [attempt("ev-1"), attempt("ev-2", user_id="u-olga", group_id="g-7b")]
            },
            headers=service_headers,
        )
        # All duplicates: nothing changed, nothing to announce.
        await ingest_api.post(
            "/ingest/attempts", json={"attempts": [attempt("ev-1")]}, headers=service_headers
        )
        notes = list(listener.notifies(timeout=2))

    assert [json.loads(n.payload) for n in notes] == [{"group_ids": ["g-7a", "g-7b"]}]


def test_notify_payloads_stay_under_the_postgresql_limit() -> None:
    group_ids = [f"group-{n:06d}" for n in range(3_000)]

    payloads = notify_payloads(group_ids)

    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(g for p in payloads for g in json.loads(p)["group_ids"]) == group_ids
    assert notify_payloads([]) == []


# --- directory -------------------------------------------------------------------------------


def _memberships(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT u.id, g.id FROM user_groups ug JOIN users u ON u.key = ug.user_key"
            " JOIN groups g ON g.key = ug.group_key"
        ).fetchall()
    return {(u, g) for u, g in rows}


def _stamps(url: str) -> list[tuple[str, object]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, updated_at FROM groups UNION ALL SELECT id, updated_at FROM users"
            " UNION ALL SELECT id, updated_at FROM levels UNION ALL SELECT id, updated_at"
            " FROM topics ORDER BY 1"
        ).fetchall()


async def test_directory_upsert_is_idempotent(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    before = _stamps(fresh_db_url)  # the `school` fixture already sent DIRECTORY once

    response = await ingest_api.put("/ingest/directory", json=DIRECTORY, headers=service_headers)

    assert response.status_code == 200
    assert _stamps(fresh_db_url) == before  # unchanged rows are not rewritten
    assert response.json() == {
        "groups": 2,
        "users": 3,
        "levels": 1,
        "topics": 2,
        "memberships": 4,
    }
    assert count(fresh_db_url, "SELECT count(*) FROM users") == 3
    assert _memberships(fresh_db_url) == {
        ("u-anna", "g-7a"),
        ("u-petr", "g-7a"),
        ("u-petr", "g-7b"),
        ("u-olga", "g-7b"),
    }


async def test_directory_upsert_updates_names_and_replaces_memberships(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    change = {
        "groups": [{"id": "g-7b", "name": "7Б (профиль)"}, {"id": "g-8a", "name": "8А"}],
        "users": [
            {"id": "u-petr", "display_name": "Петров Пётр", "group_ids": ["g-8a", "g-8a"]},
            {"id": "u-anna", "display_name": "Иванова-Смирнова Анна", "group_ids": []},
        ],
    }

    response = await ingest_api.put("/ingest/directory", json=change, headers=service_headers)

    assert response.status_code == 200, response.text
    assert response.json()["memberships"] == 1
    assert _memberships(fresh_db_url) == {("u-petr", "g-8a"), ("u-olga", "g-7b")}
    with psycopg.connect(fresh_db_url) as conn:
        names: dict[str, str] = dict(conn.execute("SELECT id, name FROM groups").fetchall())
        anna = conn.execute("SELECT display_name FROM users WHERE id = 'u-anna'").fetchone()
    assert names == {"g-7a": "7А", "g-7b": "7Б (профиль)", "g-8a": "8А"}
    assert anna == ("Иванова-Смирнова Анна",)


async def test_a_user_sent_without_group_ids_keeps_their_memberships(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    # A rename only: the platform did not say anything about u-petr's groups.
    change = {"users": [{"id": "u-petr", "display_name": "Петров Пётр Ильич"}]}

    response = await ingest_api.put("/ingest/directory", json=change, headers=service_headers)

    assert response.status_code == 200, response.text
    assert response.json()["memberships"] == 0
    assert {g for u, g in _memberships(fresh_db_url) if u == "u-petr"} == {"g-7a", "g-7b"}
    with psycopg.connect(fresh_db_url) as conn:
        petr = conn.execute("SELECT display_name FROM users WHERE id = 'u-petr'").fetchone()
    assert petr == ("Петров Пётр Ильич",)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"groups": [{"id": "7/A", "name": "7А"}]}, ["groups", 0, "id"]),
        ({"users": [{"id": "school/u1", "display_name": "X"}]}, ["users", 0, "id"]),
        ({"levels": [{"id": "l/1", "name": "L"}]}, ["levels", 0, "id"]),
        ({"topics": [{"id": "t/1", "name": "T", "level_id": "lvl-1"}]}, ["topics", 0, "id"]),
    ],
)
async def test_an_entity_id_with_a_slash_is_refused_as_no_url_could_reach_it(
    ingest_api: httpx.AsyncClient,
    service_headers: dict[str, str],
    fresh_db_url: str,
    body: dict[str, Any],
    loc: list[object],
) -> None:
    response = await ingest_api.put("/ingest/directory", json=body, headers=service_headers)

    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["loc"] for e in errors] == [loc]
    assert "must not contain '/'" in errors[0]["msg"]
    assert count(fresh_db_url, "SELECT count(*) FROM groups WHERE id LIKE '%/%'") == 0


async def test_directory_with_unknown_references_writes_nothing(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    body = {
        "groups": [{"id": "g-9a", "name": "9А"}],
        "topics": [{"id": "t-new", "name": "Новая тема", "level_id": "lvl-none"}],
        "users": [{"id": "u-new", "display_name": "Новиков Иван", "group_ids": ["g-9a", "g-x"]}],
    }

    response = await ingest_api.put("/ingest/directory", json=body, headers=service_headers)

    assert response.status_code == 422
    problem = response.json()
    assert "topics[0].level_id" in problem["detail"]
    assert "users[0].group_ids[1]" in problem["detail"]
    assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
        (["topics", 0, "level_id"], "unknown level id 'lvl-none'"),
        (["users", 0, "group_ids", 1], "unknown group id 'g-x'"),
    ]
    assert count(fresh_db_url, "SELECT count(*) FROM groups WHERE id = 'g-9a'") == 0
    assert count(fresh_db_url, "SELECT count(*) FROM users WHERE id = 'u-new'") == 0


async def test_directory_with_a_repeated_id_writes_nothing(
    ingest_api: httpx.AsyncClient, service_headers: dict[str, str], fresh_db_url: str
) -> None:
    body = {"groups": [{"id": "g-9a", "name": "9А"}, {"id": "g-9a", "name": "9Б"}]}

    response = await ingest_api.put("/ingest/directory", json=body, headers=service_headers)

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["groups", 1, "id"], "msg": "id 'g-9a' repeats groups[0]", "type": "duplicate_id"}
    ]
    assert count(fresh_db_url, "SELECT count(*) FROM groups WHERE id = 'g-9a'") == 0


# --- who may ingest --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/ingest/directory", DIRECTORY),
        ("POST", "/ingest/attempts", {"attempts": [attempt("ev-1")]}),
    ],
)
async def test_only_service_and_admin_tokens_may_ingest(
    ingest_api: httpx.AsyncClient,
    make_token: TokenFactory,
    fresh_db_url: str,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    def bearer(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(role, groups=['g-7a'])}"}

    anonymous = await ingest_api.request(method, path, json=body)
    teacher = await ingest_api.request(method, path, json=body, headers=bearer("teacher"))
    # A teacher learns nothing about the body either: 403 before validation.
    teacher_bad = await ingest_api.request(method, path, json={"x": 1}, headers=bearer("teacher"))
    admin = await ingest_api.request(method, path, json=body, headers=bearer("admin"))

    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert teacher.status_code == 403
    assert teacher_bad.status_code == 403
    assert admin.status_code == 200, admin.text


def test_the_database_refuses_a_score_no_sum_could_hold_however_it_is_written(
    fresh_db_url: str,
) -> None:
    with psycopg.connect(fresh_db_url) as conn:
        keys = conn.execute(
            "SELECT u.key, g.key, t.key FROM users u, groups g, topics t LIMIT 1"
        ).fetchone()
        assert keys is not None
        insert = (
            "INSERT INTO attempts (event_id, user_key, group_key, topic_key, task_id, is_correct,"
            " score, hints_used, time_spent_ms, attempted_at)"
            " VALUES (%s, %s, %s, %s, 'task', true, %s, 0, 1000, now())"
        )
        conn.execute(insert, ("in-range", *keys, -1e9))
        with pytest.raises(psycopg.errors.CheckViolation, match="attempts_score_range"):
            conn.execute(insert, ("huge", *keys, 1e308))
