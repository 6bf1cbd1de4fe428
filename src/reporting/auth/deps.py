"""FastAPI dependencies: the caller's scope and the shared context, as Annotated aliases."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from reporting.auth.scope import Scope
from reporting.context import AppContext
from reporting.errors import Unauthorized


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


# The dependencies are async on purpose: FastAPI runs plain `def` dependencies in a worker
# thread, a hop that costs more than the whole cached stats answer.
async def _context(request: Request) -> AppContext:
    return get_context(request)


class BearerScope(HTTPBearer):
    """The bearer token -> the caller's Scope, as ONE dependency.

    Still an HTTPBearer, so OpenAPI declares the scheme; but it reads the header itself instead
    of depending on a second dependency: each dependency FastAPI solves costs about as much as
    a whole cached stats answer.
    """

    async def __call__(self, request: Request) -> Scope:  # type: ignore[override]
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("A bearer token is required: Authorization: Bearer <JWT>.")
        scope = get_context(request).tokens.verify(token)
        request.state.scope = scope
        return scope


@dataclass(frozen=True, slots=True)
class Caller:
    scope: Scope
    context: AppContext


class BearerCaller(BearerScope):
    """The caller's Scope and the shared context as ONE dependency, for the hottest read routes
    (GET /stats/*), where a second dependency costs a tenth of the answer's time."""

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        return Caller(await super().__call__(request), get_context(request))


_BEARER = {"scheme_name": "HTTPBearer", "description": "A JWT signed with the configured key."}
get_scope = BearerScope(auto_error=False, **_BEARER)
get_caller = BearerCaller(auto_error=False, **_BEARER)

Context = Annotated[AppContext, Depends(_context)]
CurrentScope = Annotated[Scope, Depends(get_scope)]
CurrentCaller = Annotated[Caller, Depends(get_caller)]
