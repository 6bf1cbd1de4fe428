"""`PUT /ingest/directory` and `POST /ingest/attempts`: service and admin tokens only."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from reporting.auth.deps import Context, CurrentScope
from reporting.auth.scope import Scope
from reporting.errors import ValidationFailed
from reporting.ingest import schemas, service
from reporting.ingest.schemas import AttemptsIngestedRead, DirectoryCounts, DirectoryUpsert

router = APIRouter(prefix="/ingest", tags=["ingest"])

# A full batch of 10,000 attempts with long ids stays far below this; it only stops a client
# from making us buffer an unbounded body before the batch size can be checked.
MAX_BODY_BYTES = 64 * 1024 * 1024


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
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ValidationFailed(
                f"The body is larger than {MAX_BODY_BYTES // 2**20} MiB; send at most"
                f" {schemas.MAX_BATCH:,} attempts per request. Nothing was inserted.",
                [],
            )
    return bytes(body)
