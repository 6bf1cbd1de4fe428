"""The error tree; one handler renders every ReportingError as application/problem+json.

ReportingError (500)
 ├── Unauthorized (401, WWW-Authenticate: Bearer)
 ├── Forbidden (403)            also for ids outside the caller's scope, existing or not
 ├── NotFound (404)
 ├── Gone (410)
 ├── ValidationFailed (422, errors[])
 ├── TooManyRequests (429, Retry-After)
 └── ServiceUnavailable (503)
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ReportingError(Exception):
    status_code = 500
    title = "Internal Server Error"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}

    def problem(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
        }


class Unauthorized(ReportingError):
    status_code = 401
    title = "Unauthorized"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        # Exactly "Bearer", as CONTRACT §5 says, whatever the reason: the problem's detail says
        # why (RFC 6750's error="invalid_token" parameter is optional).
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class Forbidden(ReportingError):
    status_code = 403
    title = "Forbidden"


class NotFound(ReportingError):
    status_code = 404
    title = "Not Found"


class Gone(ReportingError):
    status_code = 410
    title = "Gone"


class ValidationFailed(ReportingError):
    status_code = 422
    title = "Unprocessable Content"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.errors = errors

    def problem(self) -> dict[str, Any]:
        return {**super().problem(), "errors": self.errors}


class TooManyRequests(ReportingError):
    status_code = 429
    title = "Too Many Requests"


class ServiceUnavailable(ReportingError):
    status_code = 503
    title = "Service Unavailable"


def problem_response(error: ReportingError) -> JSONResponse:
    return JSONResponse(
        error.problem(),
        status_code=error.status_code,
        headers=error.headers,
        media_type=PROBLEM_JSON,
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    return [part for part in loc if part != "body"]


# A route whose every answer, errors included, carries some headers (an export's RateLimit-*)
# puts an async provider of them here, in a dependency: the error handlers add what it gives.
ERROR_HEADERS_STATE = "error_headers"
ErrorHeaders = Callable[[], Awaitable[dict[str, str]]]


async def _route_headers(request: Request) -> dict[str, str]:
    provider: ErrorHeaders | None = getattr(request.state, ERROR_HEADERS_STATE, None)
    if provider is None:
        return {}
    try:
        return await provider()
    except Exception as error:  # the error answer goes out regardless
        log.warning("headers for an error answer unavailable", extra={"error": str(error)})
        return {}


async def _answer(request: Request, error: ReportingError) -> JSONResponse:
    response = problem_response(error)
    for name, value in (await _route_headers(request)).items():
        response.headers.setdefault(name, value)  # the error's own headers win (a 429's)
    return response


def install_error_handlers(app: FastAPI) -> None:
    async def on_reporting_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ReportingError)
        return await _answer(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": _location(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return await _answer(request, ValidationFailed("The request is not valid.", errors))

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = ReportingError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        error.title = {404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}.get(
            exc.status_code, "Error"
        )
        return problem_response(error)

    app.add_exception_handler(ReportingError, on_reporting_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
