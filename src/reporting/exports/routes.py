"""Export routes (CONTRACT §5): request an export, read one, list the caller's."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.routing import APIRoute

from reporting.auth.deps import Context, CurrentScope, get_context, get_scope
from reporting.errors import ERROR_HEADERS_STATE, PROBLEM_JSON
from reporting.exports import ratelimit, service
from reporting.exports.schemas import ExportCreate, ExportRead
from reporting.ids import PathId


class _ExportRoute(APIRoute):
    """CONTRACT §5: export responses carry RateLimit-*, refusals (403/404/422) included; the
    error handlers read the caller's quota through the provider set here only when they answer.

    The caller is authenticated here, before the route runs: FastAPI decodes a JSON body before
    it solves any dependency, so a malformed body would otherwise be answered 422 without the
    quota, and without a token at all 422 instead of 401.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            scope = await get_scope(request)  # Unauthorized (401) without a valid token
            context = get_context(request)

            async def headers() -> dict[str, str]:
                async with context.db.scoped(scope) as conn:
                    quota = await ratelimit.read_quota(
                        conn, scope.sub, limit=context.settings.exports.rate_limit_per_hour
                    )
                return quota.headers()

            setattr(request.state, ERROR_HEADERS_STATE, headers)
            return await handle(request)

        return authenticated


router = APIRouter(prefix="/stats", tags=["exports"], route_class=_ExportRoute)

_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": description}
    for name, description in (
        ("RateLimit-Limit", "Accepted export requests allowed per rolling hour"),
        ("RateLimit-Remaining", "Requests left in the current window"),
        ("RateLimit-Reset", "Seconds until the oldest counted request leaves the window"),
    )
}
# Refusals carry the quota too (see _ExportRoute).
_PROBLEM: dict[str, object] = {
    "description": "A problem+json error",
    "content": {PROBLEM_JSON: {}},
    "headers": _RATE_HEADERS,
}


async def _exportable_group(group_id: PathId, scope: CurrentScope) -> str:
    # A dependency, so a foreign group is refused (403) before the body is even validated.
    service.require_exporter(scope, group_id)
    return group_id


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post(
    "/groups/{group_id}/export",
    status_code=202,
    summary="Request a CSV, PDF or XLSX report of a group",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}, **_RATE_HEADERS}},
        403: _PROBLEM,
        404: _PROBLEM,
        422: _PROBLEM,
        429: {
            **_PROBLEM,
            "headers": {"Retry-After": {"schema": {"type": "integer"}}, **_RATE_HEADERS},
        },
    },
)
async def request_export(
    group_id: Annotated[str, Depends(_exportable_group)],
    body: ExportCreate,
    scope: CurrentScope,
    context: Context,
    request: Request,
    response: Response,
) -> ExportRead:
    export, quota = await service.request_export(
        context, scope, group_id, body, base_url=_base_url(request)
    )
    response.headers["Location"] = f"/stats/exports/{export.id}"
    response.headers.update(quota.headers())
    return export


@router.get(
    "/exports/{export_id}",
    summary="An export's status and, once ready, its download link",
    responses={200: {"headers": _RATE_HEADERS}, 403: _PROBLEM, 404: _PROBLEM},
)
async def read_export(
    export_id: str, scope: CurrentScope, context: Context, request: Request, response: Response
) -> ExportRead:
    export, quota = await service.read_export(
        context, scope, export_id, base_url=_base_url(request)
    )
    response.headers.update(quota.headers())
    return export


_NEXT_PAGE_HEADER = {
    "Link": {
        "schema": {"type": "string"},
        "description": 'The next page, `</stats/exports?limit=…&cursor=…>; rel="next"`,'
        " when there are more exports",
    }
}


@router.get(
    "/exports",
    summary="The caller's exports (an admin's: everyone's), newest first",
    responses={
        200: {"headers": {**_RATE_HEADERS, **_NEXT_PAGE_HEADER}},
        403: _PROBLEM,
        422: _PROBLEM,
    },
)
async def list_exports(
    scope: CurrentScope,
    context: Context,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> list[ExportRead]:
    # A JSON array, as CONTRACT §5 lists it; longer lists page through the Link header (RFC 8288).
    page, quota = await service.list_exports(
        context, scope, limit=limit, cursor=cursor, base_url=_base_url(request)
    )
    response.headers.update(quota.headers())
    if page.next_cursor is not None:
        query = urlencode({"limit": limit, "cursor": page.next_cursor})
        response.headers["Link"] = f'</stats/exports?{query}>; rel="next"'
    return page.items
