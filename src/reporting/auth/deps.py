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


def get_scope(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Scope:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    scope = get_context(request).tokens.verify(credentials.credentials)
    request.state.scope = scope
    return scope


Context = Annotated[AppContext, Depends(get_context)]
CurrentScope = Annotated[Scope, Depends(get_scope)]
