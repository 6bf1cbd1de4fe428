"""Who may read which statistics, and the cached JSON answers of GET /stats/*.

Order of every read: the role may read stats at all (service tokens may not: 403); the scope may
see this entity (403 for a teacher outside it, whether it exists or not); then the cache; on a
miss, the RLS-scoped query (404 when it finds nothing). Topics, levels and the global/level
leaderboards are school-wide: any reader may open them (unknown ids are 404 for everyone), but
their per-group parts and rankings only show the caller's groups.

Cache keys carry the caller's view wherever the answer depends on it (a teacher's set of groups;
None for admins and for answers identical for everyone allowed to see them, like a group's page).
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from reporting.auth.scope import Scope
from reporting.db.engine import Database
from reporting.errors import Forbidden, NotFound
from reporting.stats import queries
from reporting.stats.cache import CachedBody, Filled, ResponseCache
from reporting.stats.schemas import LeaderboardRead, LeaderboardScope

View = frozenset[str] | None

_FOREIGN_USER = "This user is outside your scope."


def _view(scope: Scope) -> View:
    return None if scope.is_admin else scope.group_ids


def _json(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def _seconds_left(leaderboard: LeaderboardRead | None) -> float | None:
    if leaderboard is None:
        return None
    return (leaderboard.expires_at - datetime.now(UTC)).total_seconds()


async def read_group(
    db: Database, cache: ResponseCache, scope: Scope, group_id: str, *, fresh: bool = False
) -> CachedBody:
    scope.require_stats_reader()
    scope.require_group(group_id)

    async def fill() -> Filled:
        async with db.scoped(scope) as conn:
            page = await queries.read_group_page(conn, scope, group_id)
        if page is None:
            raise NotFound("No such group.")
        return Filled(page.body, frozenset({group_id}), _seconds_left(page.leaderboard))

    return await cache.get_or_fill(("group", group_id), fill, fresh=fresh)


async def read_user(
    db: Database, cache: ResponseCache, scope: Scope, user_id: str, *, fresh: bool = False
) -> CachedBody:
    scope.require_stats_reader()
    if not scope.is_admin:
        # Membership is checked in the database on every request (it changes without any
        # stats_changed), before anything is looked up or cached.
        async with db.scoped(scope) as conn:
            if not await queries.user_is_visible(conn, scope, user_id):
                raise Forbidden(_FOREIGN_USER)

    async def fill() -> Filled:
        async with db.scoped(scope) as conn:
            user = await queries.read_user_stats(conn, scope, user_id)
        if user is None:
            raise NotFound("No such user.") if scope.is_admin else Forbidden(_FOREIGN_USER)
        # A learner's totals move with any of their groups, seen or not: depend on everything.
        return Filled(_json(user), None)

    return await cache.get_or_fill(("user", user_id, _view(scope)), fill, fresh=fresh)


async def _read_school_wide(
    db: Database,
    cache: ResponseCache,
    scope: Scope,
    kind: str,
    entity_id: str,
    read: Callable[[queries.Connection, Scope, str], Awaitable[BaseModel | None]],
    fresh: bool,
) -> CachedBody:
    scope.require_stats_reader()

    async def fill() -> Filled:
        async with db.scoped(scope) as conn:
            entry = await read(conn, scope, entity_id)
        if entry is None:
            raise NotFound(f"No such {kind}.")
        # School-wide numbers move with every group: depend on everything.
        return Filled(_json(entry), None)

    return await cache.get_or_fill((kind, entity_id, _view(scope)), fill, fresh=fresh)


async def read_topic(
    db: Database, cache: ResponseCache, scope: Scope, topic_id: str, *, fresh: bool = False
) -> CachedBody:
    return await _read_school_wide(
        db, cache, scope, "topic", topic_id, queries.read_topic_stats, fresh
    )


async def read_level(
    db: Database, cache: ResponseCache, scope: Scope, level_id: str, *, fresh: bool = False
) -> CachedBody:
    return await _read_school_wide(
        db, cache, scope, "level", level_id, queries.read_level_stats, fresh
    )


async def read_leaderboard(
    db: Database,
    cache: ResponseCache,
    scope: Scope,
    board: LeaderboardScope,
    scope_id: str,
    *,
    fresh: bool = False,
) -> CachedBody:
    scope.require_stats_reader()
    if board == "group":
        scope.require_group(scope_id)
    # A group board is the same for everyone who may open it; global and level boards are
    # filtered to the teacher's learners.
    view = None if board == "group" else _view(scope)

    async def fill() -> Filled:
        async with db.scoped(scope) as conn:
            leaderboard = await queries.read_leaderboard(conn, scope, board, scope_id)
        if leaderboard is None:
            raise NotFound("No current leaderboard for this scope.")
        groups = frozenset({scope_id}) if board == "group" else None
        return Filled(_json(leaderboard), groups, _seconds_left(leaderboard))

    return await cache.get_or_fill(("leaderboard", board, scope_id, view), fill, fresh=fresh)
