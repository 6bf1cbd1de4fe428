"""`GET /files/{key}`: exports of the local store, behind HMAC-signed links (no JWT: the
signature is the credential)."""

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from reporting.auth.deps import Context
from reporting.errors import PROBLEM_JSON, NotFound
from reporting.storage.base import content_disposition, content_type_for
from reporting.storage.local import LocalStore

router = APIRouter(tags=["files"])

_PROBLEM: dict[str, object] = {"description": "A problem+json error", "content": {PROBLEM_JSON: {}}}


# HEAD too: download managers and link previews ask it first (the same answer, no body).
@router.head("/files/{key:path}", include_in_schema=False)
@router.get(
    "/files/{key:path}",
    summary="Download an exported file through a signed link",
    response_class=FileResponse,
    responses={403: _PROBLEM, 404: _PROBLEM, 410: _PROBLEM},
)
async def download_file(
    key: str,
    context: Context,
    expires: str | None = Query(default=None, description="Unix time the link stops working"),
    fn: str | None = Query(default=None, description="The download's file name"),
    sig: str | None = Query(default=None, description="HMAC-SHA256 of key, expires and fn"),
) -> FileResponse:
    store = context.store
    if not isinstance(store, LocalStore):
        raise NotFound("Files are served by the object storage, not by this API.")
    path, filename = store.open_link(key, expires=expires, filename=fn, signature=sig)
    return FileResponse(
        path,
        media_type=content_type_for(key),
        headers={
            "Content-Disposition": content_disposition(filename),
            # The link is the credential: nothing on the way may keep a copy past its expiry.
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
