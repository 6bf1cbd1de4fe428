"""The dashboard tests' world: Debian's Chromium driven by Playwright, the real API served by
uvicorn on 127.0.0.1 in a thread, over a database holding the small school of school.py.

Every browser test also checks that the page asked nothing of any other server and threw no
JavaScript error (`page_guard`, autouse for tests that use `page`).
"""

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserType, Page, Playwright, Request, sync_playwright

from reporting.app import create_app
from reporting.settings import DatabaseSettings, Settings, WorkerSettings
from tests.conftest import make_settings
from tests.dashboard import school as school_data
from tests.ops.processes import service_env
from tests.servers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def browser_type_launch_args(
    browser_type_launch_args: dict[str, object], browser_name: str | None
) -> dict[str, object]:
    # Only Chromium gets Debian's binary; forcing it on another browser type would hang.
    if browser_name not in (None, "chromium"):
        return browser_type_launch_args
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


# Sync Playwright keeps its event loop marked as running in the main thread for as long as it
# lives, and then no asyncio test can run. pytest-playwright starts it once per session, so every
# async test after this package would fail: these overrides stop it when the package ends.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser_type(playwright: Playwright, browser_name: str | None) -> BrowserType:
    browser_type: BrowserType = getattr(playwright, browser_name or "chromium")
    return browser_type


@pytest.fixture(scope="package")
def launch_browser(
    browser_type_launch_args: dict[str, Any], browser_type: BrowserType
) -> Callable[..., Browser]:
    def launch(**kwargs: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="package")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="package")
def browser_context_args() -> dict[str, Any]:
    return {"locale": "ru-RU", "timezone_id": "UTC"}


@pytest.fixture(scope="session")
def base_url() -> None:
    """Replaces pytest-playwright's fallback fixture, an instance method that pytest 9 warns
    about (an error here); the tests build absolute URLs from `live_server`."""
    return None


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def school(module_db_url: str) -> school_data.School:
    with psycopg.connect(module_db_url) as conn:
        built = school_data.build_school(conn)
        school_data.derive(conn, built)
    return built


@dataclass
class LiveServer:
    base_url: str
    db_url: str
    data_dir: Path
    settings: Settings
    app: object
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str = "/dashboard") -> str:
        return self.base_url + path


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


def serve(settings: Settings, db_url: str, data_dir: Path) -> Iterator[LiveServer]:
    """The real app on a free 127.0.0.1 port, in a thread, until the generator is closed."""
    app = create_app(settings, url=db_url)
    port = free_port()
    server = _Uvicorn(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    env = service_env(
        database_url=db_url,
        data_dir=data_dir,
        extra={"REPORTING_LOG_JSON": "false", "REPORTING_LOG_LEVEL": "WARNING"},
    )
    if settings.storage.files_dir is not None:  # the worker writes where the API serves from
        env["REPORTING_FILES_DIR"] = str(settings.storage.files_dir)
    try:
        yield LiveServer(
            base_url=f"http://127.0.0.1:{port}",
            db_url=db_url,
            data_dir=data_dir,
            settings=settings,
            app=app,
            env=env,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _serve_school(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, *, live_updates: bool
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("dashboard-data")
    settings = make_settings(
        db_url,
        database=DatabaseSettings(DATABASE_URL=db_url, REPORTING_DATA_DIR=str(data_dir)),
        worker=WorkerSettings(REPORTING_ENABLE_LIVE_UPDATES=live_updates),
    )
    yield from serve(settings, db_url, data_dir)


@pytest.fixture(scope="module")
def live_server(
    module_db_url: str, school: school_data.School, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    yield from _serve_school(module_db_url, tmp_path_factory, live_updates=False)


@pytest.fixture(scope="module")
def live_updates_server(
    module_db_url: str, school: school_data.School, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Like `live_server`, with REPORTING_ENABLE_LIVE_UPDATES=true (the event stream served)."""
    yield from _serve_school(module_db_url, tmp_path_factory, live_updates=True)


@pytest.fixture(scope="module")
def export_worker(live_server: LiveServer) -> Iterator[subprocess.Popen[bytes]]:
    """`export-worker` as a process on the same database and files directory as the API."""
    command = [str(Path(sys.executable).parent / "export-worker")]
    log_path = live_server.data_dir / "export-worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=live_server.env, stdout=log, stderr=log)
    time.sleep(0.3)
    if process.poll() is not None:
        raise RuntimeError(f"export-worker exited: {log_path.read_text()}")
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class PageGuard:
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def page_guard(request: pytest.FixtureRequest) -> Iterator[PageGuard]:
    """For browser tests: no request leaves for another server, no uncaught JS error."""
    guard = PageGuard()
    if "page" not in request.fixturenames:
        yield guard
        return
    page: Page = request.getfixturevalue("page")

    def on_request(req: Request) -> None:
        guard.requests.append(req.url)

    page.on("request", on_request)
    page.on("pageerror", lambda error: guard.errors.append(str(error)))
    yield guard
    origin = (
        request.getfixturevalue("live_server").base_url + "/"
        if "live_server" in request.fixturenames
        else "http://127.0.0.1:"
    )
    foreign = [url for url in guard.requests if not url.startswith((origin, "data:", "blob:"))]
    assert not foreign, f"requests to other servers: {foreign}"
    assert not guard.errors, f"uncaught JavaScript errors: {guard.errors}"
