"""`PUT /ingest/directory` and `POST /ingest/attempts`: service and admin tokens only."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from reporting.auth.deps import Context, CurrentScope
from reporting.auth.scope import Scope
from reporting.ingest import schemas, service
from reporting.ingest.schemas import AttemptsIngestedRead, DirectoryCounts, DirectoryUpsert

router = APIRouter(prefix="/ingest", tags=["ingest"])

# The largest body these routes take (app.py gives it to the middleware that enforces limits):
# a full batch of 10,000 attempts with long ids, or a school's directory, stays far below it.
MAX_BODY_BYTES = 64 * 2**20


def _ingest_scope(scope: CurrentScope) -> Scope:
    scope.require_ingest()
    return scope


# A dependency, so that 401/403 come before the body is read or validated.
IngestScope = Annotated[Scope, Depends(_ingest_scope)]


@router.put("/directory", summary="Upsert groups, users (with memberships), levels and topics")
async def put_directory(
    directory: DirectoryUpsert, _: IngestScope, context: Context
) -> DirectoryCounts:
    return await service.ingest_directory(context.db, directory)


@router.post(
    "/attempts",
    summary="Ingest up to 10,000 attempts; all or nothing, idempotent on event_id",
    openapi_extra=schemas.ATTEMPT_BATCH_OPENAPI,
)
async def post_attempts(request: Request, _: IngestScope, context: Context) -> AttemptsIngestedRead:
    # Parsed here rather than by FastAPI: pydantic's JSON parser is faster, and an oversized
    # batch is refused by its length before its items are validated.
    try:
        batch = schemas.parse_attempt_batch(await _body(request))
    except schemas.EntriesRejected as rejected:
        raise await service.name_unknown_references(context.db, rejected) from None
    result = await service.ingest_attempts(context.db, batch.attempts)
    return AttemptsIngestedRead(inserted=result.inserted, duplicates=result.duplicates)


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():  # stopped with a 413 past MAX_BODY_BYTES
        body += chunk
    return bytes(body)
