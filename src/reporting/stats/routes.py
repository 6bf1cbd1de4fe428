"""GET /stats/*: the read API of the derived statistics (CONTRACT §5).

Answers are served as the cached JSON bytes (see stats/cache.py) with an ETag; a matching
If-None-Match gets 304. A request with `Cache-Control: no-cache` never gets a page that changed
served stale. The declared response models are what the bytes contain.
GET /stats/groups/{id}/events is the one stream: Server-Sent Events (see stats/events.py).
"""

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from reporting.auth.deps import CurrentCaller
from reporting.http import accepts_gzip, etag_matches
from reporting.ids import PathId
from reporting.stats import events, service
from reporting.stats.cache import CachedBody
from reporting.stats.schemas import (
    GroupStatsRead,
    LeaderboardRead,
    LeaderboardScope,
    LevelStatsRead,
    TopicStatsRead,
    UserStatsRead,
)

router = APIRouter(prefix="/stats", tags=["stats"])

_PROBLEM: dict[str, object] = {"application/problem+json": {}}
_READ_ERRORS: dict[int | str, dict[str, object]] = {
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    401: {"description": "Missing, invalid or expired token", "content": _PROBLEM},
    403: {
        "description": "A service token, or an entity outside a teacher's groups (existing or not)",
        "content": _PROBLEM,
    },
    404: {"description": "Unknown id (for those allowed to ask)", "content": _PROBLEM},
}


def _wants_fresh(request: Request) -> bool:
    """`Cache-Control: no-cache` (or `max-age=0`, a browser's reload) on the request: a page
    that changed is refilled, never served stale (see stats/cache.py)."""
    directives = (request.headers.get("cache-control") or "").lower().split(",")
    return any(d.strip() in ("no-cache", "max-age=0") for d in directives)


def _json(cached: CachedBody, request: Request) -> Response:
    # The cached bytes as they are: precompressed when the client takes gzip (browsers do).
    body, etag, encoding = cached.body, cached.etag, None
    if (
        cached.gzip_body
        and cached.gzip_etag
        and accepts_gzip(request.headers.get("accept-encoding"))
    ):
        body, etag, encoding = cached.gzip_body, cached.gzip_etag, "gzip"
    # private: the body depends on the bearer; no-cache: revalidate, a 304 is cheap.
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-cache",
        "Vary": "Authorization, Accept-Encoding",
    }
    if etag_matches(request.headers.get("if-none-match"), cached.etag, cached.gzip_etag):
        return Response(status_code=304, headers=headers)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/groups/{group_id}",
    response_model=GroupStatsRead,
    responses=_READ_ERRORS,
    summary="A group's statistics: KPIs, leaderboard, per level and per topic",
    description="Levels are ordered by position; topics by their level's position, then name. "
    "Only levels and topics with at least one attempt in the group are listed.",
)
async def read_group_stats(group_id: PathId, caller: CurrentCaller, request: Request) -> Response:
    cached = await service.read_group(
        caller.context.db,
        caller.context.stats_cache,
        caller.scope,
        group_id,
        fresh=_wants_fresh(request),
    )
    return _json(cached, request)


@router.get(
    "/groups/{group_id}/events",
    response_class=events.EventStream,
    status_code=200,
    responses={
        200: {
            "description": "A stream that stays open: a comment, `retry: 3000` and `id: <event "
            "id>` first (no id when a missed change follows at once); then `id: <event id>`, "
            '`event: stats_changed`, `data: {"group_id", "tick_id"}` after each change of this '
            "group's numbers (`tick_id` null when no tick made it, e.g. a directory upsert), and "
            "`event: ping` every 15 s of quiet",
            "content": {"text/event-stream": {}},
        },
        401: _READ_ERRORS[401],
        403: _READ_ERRORS[403],
        404: {
            "description": "Unknown id (for those allowed to ask), or live updates are off "
            "(REPORTING_ENABLE_LIVE_UPDATES=false)",
            "content": _PROBLEM,
        },
        429: {
            "description": "Too many streams open for this token's subject (Retry-After)",
            "content": _PROBLEM,
        },
        503: {"description": "Too many open streams on this server", "content": _PROBLEM},
    },
    summary="Server-Sent Events: this group's statistics changed",
    description="The same access rules as GET /stats/groups/{id}. An event carries no numbers: "
    "read the group again. Event ids are opaque. A reconnecting client that sends its "
    "`Last-Event-ID` is told at once if the group changed since; always when the id is not "
    "one this server process handed out (another API worker, a restart, a malformed id). "
    "The stream ends when the token expires.",
)
async def follow_group_stats(
    group_id: PathId,
    caller: CurrentCaller,
    last_event_id: Annotated[str | None, Header()] = None,
) -> events.EventStream:
    context = caller.context
    return await events.follow_group(
        context.db,
        context.stats_cache,
        context.stats_events,
        caller.scope,
        group_id,
        last_event_id,
    )


@router.get(
    "/users/{user_id}",
    response_model=UserStatsRead,
    responses=_READ_ERRORS,
    summary="A learner's progress summary",
    description="For a teacher, `group_ids` lists only the teacher's groups of this learner.",
)
async def read_user_stats(user_id: PathId, caller: CurrentCaller, request: Request) -> Response:
    cached = await service.read_user(
        caller.context.db,
        caller.context.stats_cache,
        caller.scope,
        user_id,
        fresh=_wants_fresh(request),
    )
    return _json(cached, request)


@router.get(
    "/topics/{topic_id}",
    response_model=TopicStatsRead,
    responses=_READ_ERRORS,
    summary="A topic's school-wide statistics and those of the caller's groups",
    description="`groups` is ordered by group id; a teacher sees only their own groups.",
)
async def read_topic_stats(topic_id: PathId, caller: CurrentCaller, request: Request) -> Response:
    cached = await service.read_topic(
        caller.context.db,
        caller.context.stats_cache,
        caller.scope,
        topic_id,
        fresh=_wants_fresh(request),
    )
    return _json(cached, request)


@router.get(
    "/levels/{level_id}",
    response_model=LevelStatsRead,
    responses=_READ_ERRORS,
    summary="A level's school-wide statistics and those of the caller's groups",
    description="`groups` is ordered by group id; a teacher sees only their own groups.",
)
async def read_level_stats(level_id: PathId, caller: CurrentCaller, request: Request) -> Response:
    cached = await service.read_level(
        caller.context.db,
        caller.context.stats_cache,
        caller.scope,
        level_id,
        fresh=_wants_fresh(request),
    )
    return _json(cached, request)


@router.get(
    "/leaderboards/{scope}/{scope_id}",
    response_model=LeaderboardRead,
    responses={**_READ_ERRORS, 422: {"description": "Unknown scope", "content": _PROBLEM}},
    summary="A current leaderboard: global (scope_id `global`), of a group or of a level",
    description="For a teacher, global and level boards keep only the learners of the teacher's "
    "groups, with their ranks on the whole board. An expired board is 404. "
    "A scope other than global, group or level is 422.",
)
async def read_leaderboard(
    scope: LeaderboardScope, scope_id: PathId, caller: CurrentCaller, request: Request
) -> Response:
    context = caller.context
    cached = await service.read_leaderboard(
        context.db, context.stats_cache, caller.scope, scope, scope_id, fresh=_wants_fresh(request)
    )
    return _json(cached, request)
