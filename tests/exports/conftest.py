"""A small school with committed data, a deployment (settings, store, API client, in-process
worker) over the local file store or a real S3 endpoint (moto), and helpers to drive exports
through the API."""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from reporting.exports import worker
from reporting.settings import ExportSettings, NotifySettings, Settings, StorageSettings
from reporting.storage import ObjectStore, build_store
from tests.builders import Attempt, make_attempts, make_group, make_level, make_topic, make_user
from tests.conftest import TokenFactory, api_client, make_settings
from tests.exports.reference import Student, Topic
from tests.servers import S3Server, http_capture, s3_bucket, s3_server, smtp_server  # noqa: F401

GROUP, OTHER_GROUP = "g-7a", "g-7b"
GROUP_NAME, OTHER_GROUP_NAME = "7А «Математика»", "7Б"
# One long word each: a narrow table column would break it.
LEVEL_NAMES = {"lvl-1": "Натуральные числа", "lvl-2": "Десятичные дроби"}
EVIL_NAME = '=HYPERLINK("http://x","y")'
SEPTEMBER = {"from": "2026-09-01", "to": "2026-09-30"}


@dataclass
class School:
    students: dict[str, Student]
    topics: dict[str, Topic]
    attempts: list[Attempt]

    def group_name(self, group_id: str) -> str:
        return {GROUP: GROUP_NAME, OTHER_GROUP: OTHER_GROUP_NAME}[group_id]


def _school() -> School:
    students = {
        s.user_id: s
        for s in (
            Student("u-ivanova", "Иванова Анна", (GROUP,)),
            Student("u-petrov", 'Петров, "Пётр"', (GROUP,)),
            Student("u-evil", EVIL_NAME, (GROUP,)),
            Student("u-neg", "Сидоров Олег", (GROUP,)),
            Student("u-at", "@Смирнов", (GROUP,)),
            Student("u-both", "Алексеева Мария", (GROUP, OTHER_GROUP)),
            Student("u-other", "Другой Ученик", (OTHER_GROUP,)),
        )
    }
    topics = {
        t.topic_id: t
        for t in (
            Topic("t-frac", "Дроби", "lvl-1"),
            Topic("t-eq", "Уравнения", "lvl-1"),
            Topic("t-geo", "Геометрия", "lvl-2"),
            Topic("t-prob", "Вероятность", "lvl-2"),
        )
    }
    rng = random.Random(7)
    start = datetime(2026, 8, 25, tzinfo=UTC)
    attempts: list[Attempt] = []
    for user_id, student in students.items():
        for group_id in student.group_ids:
            for _ in range(40):
                attempts.append(
                    Attempt(
                        user_id=user_id,
                        group_id=group_id,
                        topic_id=rng.choice(sorted(topics)),
                        is_correct=rng.random() < 0.7,
                        score=-1.0 if user_id == "u-neg" else rng.choice([0.0, 0.5, 1.0, 2.0]),
                        hints_used=rng.choice([0, 0, 0, 1, 2]),
                        time_spent_ms=rng.randint(2_000, 90_000),
                        attempted_at=start + timedelta(seconds=rng.randint(0, 40 * 86400)),
                    )
                )
    # The period's edges: both ends inclusive, a microsecond outside excluded.
    for moment in (
        datetime(2026, 8, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 9, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 9, 30, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 10, 1, 0, 0, tzinfo=UTC),
    ):
        attempts.append(Attempt("u-ivanova", GROUP, "t-prob", attempted_at=moment, score=3.0))
    return School(students=students, topics=topics, attempts=attempts)


def load_school(url: str) -> School:
    school = _school()
    with psycopg.connect(url) as conn:
        make_group(conn, GROUP, GROUP_NAME)
        make_group(conn, OTHER_GROUP, OTHER_GROUP_NAME)
        for position, (level_id, name) in enumerate(LEVEL_NAMES.items(), start=1):
            make_level(conn, level_id, position, name)
        for topic in school.topics.values():
            make_topic(conn, topic.topic_id, topic.level_id, topic.name)
        for student in school.students.values():
            make_user(conn, student.user_id, list(student.group_ids), student.display_name)
        make_attempts(conn, school.attempts)
    return school


@dataclass
class Deployment:
    """One database, one store, the API in-process and the worker called in-process."""

    url: str
    settings: Settings
    store: ObjectStore
    api: httpx.AsyncClient
    tokens: TokenFactory
    backend: str
    s3: S3Server | None = None
    bucket: str | None = None
    subs: dict[str, str] = field(default_factory=dict)

    def teacher(self, groups: list[str] | None = None, **claims: Any) -> dict[str, str]:
        token = self.tokens("teacher", groups or [GROUP], **claims)
        return {"Authorization": f"Bearer {token}"}

    def admin(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens('admin', **claims)}"}

    async def request(
        self, headers: dict[str, str], body: dict[str, Any], group_id: str = GROUP
    ) -> httpx.Response:
        return await self.api.post(f"/stats/groups/{group_id}/export", json=body, headers=headers)

    def run_worker(self) -> worker.TickResult:
        return worker.tick(self.url, self.settings, self.store)

    async def produce(
        self, headers: dict[str, str], body: dict[str, Any], group_id: str = GROUP
    ) -> dict[str, Any]:
        """Request, run the worker, return the export as GET shows it."""
        response = await self.request(headers, body, group_id)
        assert response.status_code == 202, response.text
        await asyncio.to_thread(self.run_worker)
        got = await self.api.get(response.headers["Location"], headers=headers)
        assert got.status_code == 200, got.text
        export: dict[str, Any] = got.json()
        return export

    async def download(self, link: str) -> httpx.Response:
        """Fetch a signed link: local links through the ASGI app, S3 links from moto."""
        if link.startswith(("/", "http://testserver")):
            return await self.api.get(link)
        async with httpx.AsyncClient() as client:
            return await client.get(link)

    def objects(self) -> list[str]:
        """Every object key the store holds."""
        if self.s3 is not None:
            listing = self.s3.client().list_objects_v2(Bucket=self.bucket)
            return sorted(item["Key"] for item in listing.get("Contents", []))
        root = Path(self.settings.storage.files_dir or "")
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def storage_for(backend: str, tmp_path: Path, s3: S3Server, bucket: str) -> StorageSettings:
    if backend == "s3":
        return s3.storage_settings(bucket, prefix="reports/")
    return StorageSettings(REPORTING_FILES_DIR=str(tmp_path / "files"))


@pytest.fixture
def school_url(fresh_db_url: str) -> str:
    return fresh_db_url


@pytest.fixture
def school(school_url: str) -> School:
    return load_school(school_url)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def deployment_settings(
    url: str,
    storage: StorageSettings,
    *,
    exports: ExportSettings | None = None,
    notify: NotifySettings | None = None,
) -> Settings:
    return make_settings(
        url,
        storage=storage,
        exports=exports or ExportSettings(),
        notify=notify or NotifySettings(),
    )


DeploymentFactory = Callable[..., contextlib.AbstractAsyncContextManager[Deployment]]


@pytest.fixture
def make_deployment(
    school_url: str,
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    make_token: TokenFactory,
) -> DeploymentFactory:
    """make_deployment(backend, storage=..., exports=..., notify=...) -> async context manager."""

    @contextlib.asynccontextmanager
    async def factory(
        backend: str = "local",
        *,
        storage: StorageSettings | None = None,
        exports: ExportSettings | None = None,
        notify: NotifySettings | None = None,
    ) -> AsyncIterator[Deployment]:
        bucket = s3_server.create_bucket() if backend == "s3" and storage is None else None
        settings = deployment_settings(
            school_url,
            storage or storage_for(backend, tmp_path, s3_server, bucket or ""),
            exports=exports,
            notify=notify,
        )
        async with api_client(settings, school_url) as client:
            yield Deployment(
                url=school_url,
                settings=settings,
                store=build_store(settings),
                api=client,
                tokens=make_token,
                backend=backend,
                s3=s3_server if bucket else None,
                bucket=bucket,
            )

    return factory


@pytest.fixture
async def deployment(make_deployment: DeploymentFactory, backend: str) -> AsyncIterator[Deployment]:
    async with make_deployment(backend) as built:
        yield built


def rows_of(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()
