"""The Teacher Dashboard: its page, its static files and the few reads the /stats API lacks
(the caller's groups, the topic catalogue for the filters, the group's students with flags).

The page and its files need no token; everything with data behind it does (CurrentScope).
"""

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError

from reporting.auth.deps import Context, CurrentScope
from reporting.dashboard import assets, queries, service
from reporting.dashboard.schemas import (
    GroupList,
    GroupOption,
    GroupStudents,
    LevelOption,
    TopicCatalog,
    TopicOption,
)
from reporting.errors import NotFound
from reporting.http import accepts_gzip, etag_matches
from reporting.ids import PathId

router = APIRouter(tags=["dashboard"])

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)

# Everything the page loads comes from this origin; the JWT never leaves it.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


class DemoToken(BaseModel):
    label: str  # the terminal's (both languages); the page names the role in its own language
    role: str
    token: str
    groups: str = ""  # the teacher's group names, shown after the role


def _demo_tokens(request: Request) -> list[DemoToken]:
    """Tokens `reporting demo` put on app.state; none outside the demo."""
    tokens: list[DemoToken] = []
    for raw in getattr(request.app.state, "demo_tokens", None) or []:
        try:
            tokens.append(DemoToken.model_validate(raw))
        except ValidationError:
            continue
    return tokens


def _json_for_script(value: object) -> str:
    """JSON safe inside <script type="application/json"> (no `</script>` break-out)."""
    return (
        json.dumps(value, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request) -> HTMLResponse:
    bundle = assets.bundle()
    modules = sorted(name for name in bundle.files if name.endswith(".js"))
    html = _templates.get_template("index.html").render(
        static=f"/dashboard/static/{bundle.version}",
        modules=modules,
        demo_tokens=_json_for_script([t.model_dump() for t in _demo_tokens(request)]),
        # Without live updates the page does not open event streams only to be told 404.
        live_updates=request.app.state.context.settings.worker.enable_live_updates,
    )
    headers = {**_PAGE_HEADERS, "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("accept-encoding")):
        body = gzip.compress(html.encode(), compresslevel=6)
        return HTMLResponse(body, headers={**headers, "Content-Encoding": "gzip"})
    return HTMLResponse(html, headers=headers)


@router.get("/dashboard/", include_in_schema=False)
async def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/dashboard/static/{name:path}", include_in_schema=False)
async def dashboard_static(name: str, request: Request) -> Response:
    bundle = assets.bundle()
    version, _, rest = name.partition("/")
    if version == bundle.version and rest in bundle.files:
        asset, cache_control = bundle.files[rest], _IMMUTABLE
    elif name in bundle.files:
        asset, cache_control = bundle.files[name], _REVALIDATE
    elif rest in bundle.files:
        # A page from before a redeploy asks for an old version: serve the current file, uncached.
        asset, cache_control = bundle.files[rest], _REVALIDATE
    else:
        raise NotFound("No such dashboard file.")
    headers = {
        "Cache-Control": cache_control,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    if asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding")):
        return Response(
            asset.gzipped,
            media_type=asset.media_type,
            headers={**headers, "Content-Encoding": "gzip"},
        )
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/dashboard/api/groups", summary="The groups the caller may open in the dashboard")
async def dashboard_groups(
    scope: CurrentScope,
    context: Context,
    q: Annotated[str, Query(max_length=200, description="Admins: search id or name")] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> GroupList:
    scope.require_stats_reader()
    async with context.db.scoped(scope) as conn:
        rows = await queries.list_groups(conn, scope, query=q.strip(), limit=limit)
    return GroupList(
        groups=[GroupOption(id=row.id, name=row.name) for row in rows[:limit]],
        truncated=len(rows) > limit,
    )


@router.get("/dashboard/api/topics", summary="Levels and topics, for the dashboard's filters")
async def dashboard_topics(scope: CurrentScope, context: Context) -> TopicCatalog:
    scope.require_stats_reader()
    async with context.db.scoped(scope) as conn:
        levels, topics = await queries.list_levels_and_topics(conn)
    return TopicCatalog(
        levels=[LevelOption(id=r.id, name=r.name, position=r.position) for r in levels],
        topics=[TopicOption(id=r.id, name=r.name, level_id=r.level_id) for r in topics],
    )


@router.get(
    "/dashboard/api/groups/{group_id}/students",
    summary="The group's students with figures and attention flags, those needing attention first",
)
async def dashboard_group_students(
    group_id: PathId, scope: CurrentScope, context: Context
) -> GroupStudents:
    async with context.db.scoped(scope) as conn:
        return await service.group_students(conn, scope, group_id, now=datetime.now(UTC))
