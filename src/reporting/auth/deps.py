"""FastAPI dependencies: the caller's scope and the shared context, as Annotated aliases."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from reporting.auth.scope import Scope
from reporting.context import AppContext
from reporting.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="A JWT signed with the configured key.")


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


# The dependencies are async on purpose: FastAPI runs plain `def` dependencies in a worker
# thread, a hop that costs more than the whole cached stats answer.
async def _context(request: Request) -> AppContext:
    return get_context(request)


async def get_scope(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Scope:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    scope = get_context(request).tokens.verify(credentials.credentials)
    request.state.scope = scope
    return scope


Context = Annotated[AppContext, Depends(_context)]
CurrentScope = Annotated[Scope, Depends(get_scope)]
