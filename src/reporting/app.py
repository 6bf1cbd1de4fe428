"""create_app(settings) -> FastAPI: the API's composition root."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reporting import __version__
from reporting.auth.tokens import TokenVerifier
from reporting.context import AppContext
from reporting.db import schema
from reporting.db.engine import Database, database_url
from reporting.errors import ServiceUnavailable, install_error_handlers
from reporting.observability import ObservabilityMiddleware
from reporting.settings import Settings
from reporting.stats.cache import StatsChangeListener
from reporting.stats.events import StatsEventHub, closed_on_exit_signals, watch_live_worker
from reporting.storage import build_store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2**20


def _demo_tokens(settings: Settings) -> list[dict[str, str]]:
    """Tokens `reporting demo` left for the dashboard's sign-in page (empty outside the demo)."""
    path = settings.api.demo_tokens_file
    if path is None or not path.is_file():
        return []
    tokens: list[dict[str, str]] = json.loads(path.read_text())
    return tokens


def create_app(settings: Settings, *, url: str | None = None) -> FastAPI:
    """The HTTP API and the dashboard. `url` overrides where the database is (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = build_store(settings)
        db = Database(url or database_url(settings.database))
        await db.open()
        stats_events = StatsEventHub(enabled=settings.worker.enable_live_updates)
        app.state.context = AppContext(
            settings=settings,
            db=db,
            tokens=TokenVerifier(settings.auth),
            store=store,
            stats_events=stats_events,
        )
        # The stats cache lives only while this connection listens for the worker's changes;
        # the same connection feeds the live-update streams.
        stats_listener = StatsChangeListener(
            db.url, app.state.context.stats_cache, on_change=stats_events.publish
        )
        await stats_listener.start()
        watcher = (
            asyncio.create_task(watch_live_worker(db))
            if settings.worker.enable_live_updates
            else None
        )
        try:
            with closed_on_exit_signals(stats_events):
                yield
        finally:
            if watcher is not None:
                watcher.cancel()
            stats_events.close()
            await stats_listener.stop()
            await db.close()

    # FastAPI's own /docs loads Swagger UI from a CDN: a blank page without internet access.
    app = FastAPIOffline(
        title="Reporting & Analytics",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        static_url="/docs/static",
    )
    install_error_handlers(app)
    app.state.demo_tokens = _demo_tokens(settings)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database reachable, schema current")
    async def readyz() -> dict[str, str]:
        context: AppContext = app.state.context
        try:
            async with context.db.pool.connection(timeout=2) as conn:
                revision = await schema.current_revision(conn)
        except Exception as error:
            log.warning("not ready: the database is not reachable", extra={"error": str(error)})
            raise ServiceUnavailable(
                f"The database is not reachable: {type(error).__name__}."
            ) from None
        head = schema.head_revision()
        if revision != head:
            raise ServiceUnavailable(
                f"The schema is not current (expected {head}); run `reporting migrate`."
            )
        return {"status": "ready", "schema": head}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    from reporting.dashboard import routes as dashboard_routes
    from reporting.exports import routes as export_routes
    from reporting.ingest import routes as ingest_routes
    from reporting.stats import routes as stats_routes
    from reporting.storage import routes as storage_routes

    app.include_router(stats_routes.router)
    app.include_router(export_routes.router)
    app.include_router(ingest_routes.router)
    app.include_router(storage_routes.router)
    app.include_router(dashboard_routes.router)
    # Every body a teacher may send is small (an export request with 1,000 topic ids is ~50 KB).
    app.add_middleware(
        ObservabilityMiddleware,
        body_limit=MAX_BODY_BYTES,
        body_limits={"/ingest/": ingest_routes.MAX_BODY_BYTES},
    )
    return app
