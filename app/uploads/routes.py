"""Input images by upload: ``POST /v1/uploads`` (multipart) and ``GET /v1/uploads/{id}``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from app.access.admission import admit
from app.deps import CallerDep, StateDep
from app.errors import problem_responses
from app.uploads.images import decode_image
from app.uploads.store import UploadRecord
from sdserve.contract.limits import MAX_UPLOAD_BYTES, UPLOAD_ID_PATTERN
from sdserve.contract.problems import InvalidImage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

UPLOAD_BODY_LIMIT = MAX_UPLOAD_BYTES + 256 * 1024
"""A multipart body: the file plus its headers and the other form fields."""


class Upload(BaseModel):
    """A stored input image, usable as `image` or `mask` in jobs by its id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "kind": "image",
                    "width": 512,
                    "height": 384,
                    "format": "JPEG",
                    "bytes": 48213,
                    "sha256": "9b74c9897bac770ffc029102a200c5de0d1d8a8d3f0c2e8e1f6c7d4b3a2f1e0d",
                    "has_alpha": False,
                    "expires_at": "2026-11-26T19:11:12Z",
                }
            ]
        }
    )

    id: str = Field(description="Use it as `image` or `mask` in a job.")
    kind: Literal["image", "mask"]
    width: int = Field(description="Width after EXIF orientation.")
    height: int = Field(description="Height after EXIF orientation.")
    format: str = Field(description="Format of the uploaded file: PNG, JPEG or WEBP.")
    bytes: int = Field(description="Size of the uploaded file.")
    sha256: str = Field(description="SHA-256 of the uploaded file's bytes.")
    has_alpha: bool = Field(description="The image has an alpha channel (usable with `mask_source: alpha`).")
    expires_at: datetime = Field(description="After this, the id can no longer be used in new jobs.")


def _view(record: UploadRecord) -> Upload:
    return Upload(
        id=record.id,
        kind=record.kind,
        width=record.width,
        height=record.height,
        format=record.format,
        bytes=record.size_bytes,
        sha256=record.sha256,
        has_alpha=record.has_alpha,
        expires_at=datetime.fromtimestamp(record.expires_at, UTC),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Upload,
    operation_id="createUpload",
    summary="Upload an input image or mask",
    description=f"Multipart upload of one PNG, JPEG or WEBP file (at most {MAX_UPLOAD_BYTES:,} bytes and "
    "4,194,304 pixels). The image is checked and stored once; use the returned id as `image` or `mask` in your "
    "jobs (it belongs to your API key: other keys cannot see or use it).",
    responses={
        201: {"headers": {"Location": {"description": "URL of the upload.", "schema": {"type": "string"}}}},
        **problem_responses(413, 422, 429, 503, 507),
    },
)
async def create_upload(
    file: Annotated[UploadFile, File(description="The image file.", json_schema_extra={"format": "binary"})],
    state: StateDep,
    caller: CallerDep,
    response: Response,
    kind: Annotated[Literal["image", "mask"], Form(description="`image` or `mask`.")] = "image",
) -> Upload:
    await admit(state, caller, None)
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidImage("body.file", f"the file is larger than {MAX_UPLOAD_BYTES:,} bytes")
    decoded = await asyncio.to_thread(decode_image, data, field="body.file", kind=kind)
    record = await state.uploads.create(decoded, kind=kind, owner=caller.owner)
    response.headers["Location"] = f"{caller.base_url}/v1/uploads/{record.id}"
    return _view(record)


@router.get(
    "/{upload_id}",
    response_model=Upload,
    operation_id="getUpload",
    summary="Get an upload",
    description="What one of your uploads is, while its id can still be used in new jobs.",
    responses=problem_responses(404, 422, 503),
)
async def get_upload(
    upload_id: Annotated[str, Path(pattern=UPLOAD_ID_PATTERN, examples=["upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0"])],
    state: StateDep,
    caller: CallerDep,
) -> Upload:
    return _view(await state.uploads.get(upload_id, caller.owner))
