"""Serve the local object store's files through signed, expiring URLs: ``GET /v1/files/{key}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from app.deps import StateDep
from app.errors import problem_responses
from sdserve.contract.problems import Forbidden, InvalidRequest, NotFound
from sdserve.storage.local import LocalStore

router = APIRouter(prefix="/v1/files", tags=["files"])

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "json": "application/json"}


@router.get(
    "/{key:path}",
    operation_id="getFile",
    summary="Download a stored file",
    description="Serves a result image or manifest. The URL comes signed from a job; it stops working when "
    "it expires (403).",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file, as it was stored: an image, a manifest (JSON), or other bytes.",
            # The raw bytes first: a client generated from this document downloads the file as it is (an image
            # is not JSON), whatever it turns out to be; the other entries say what a result's file may be.
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
                "application/json": {"schema": {"type": "object", "description": "A job's manifest.json."}},
            },
        },
        **problem_responses(403, 404, 422),
    },
)
async def get_file(
    key: Annotated[
        str,
        PathParam(description="Object key.", examples=["outputs/01a2141e-8035-722a-ae56-08d956773a95/0.png"]),
    ],
    state: StateDep,
    expires: Annotated[int, Query(description="Expiry (Unix seconds), from the signed URL.", examples=[1795637473])],
    signature: Annotated[
        str, Query(max_length=128, description="HMAC signature, from the signed URL.", examples=["101b7aa3"])
    ],
) -> FileResponse:
    store = state.store
    if not isinstance(store, LocalStore):  # S3 results come straight from the bucket
        raise NotFound("no such file")
    try:
        valid = store.verify(key, expires, signature)
        path = store.path(key)
    except InvalidRequest:
        raise NotFound("no such file") from None
    if not valid:
        raise Forbidden("the signature is invalid or the URL has expired")
    if not path.is_file():
        raise NotFound("no such file")
    media_type = _TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600, immutable"})


# HEAD answers what GET would (status and headers, no body), as HTTP asks; one documented operation is enough.
router.add_api_route("/{key:path}", get_file, methods=["HEAD"], include_in_schema=False, response_class=FileResponse)
