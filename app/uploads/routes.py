"""Input images by upload: ``POST /v1/uploads`` (multipart) and ``GET /v1/uploads/{id}``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from app.access.admission import admit
from app.deps import CallerDep, StateDep
from app.errors import problem_responses
from app.state import GatewayState
from app.uploads.datasets import (
    MAX_DATASET_BYTES,
    CheckedImage,
    DatasetInvalid,
    check_files,
    dataset_hash,
    is_zip,
    read_zip,
    store_dataset,
)
from app.uploads.images import decode_image
from app.uploads.store import DatasetRecord, UploadRecord, new_upload_id
from sdserve.contract.limits import MAX_UPLOAD_BYTES, UPLOAD_ID_PATTERN
from sdserve.contract.problems import InvalidImage, NotFound, PayloadTooLarge

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

UPLOAD_BODY_LIMIT = MAX_DATASET_BYTES + 256 * 1024
"""A multipart body: the file (an image, or a dataset zip) plus its headers and the other form fields."""


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


class DatasetUpload(BaseModel):
    """A stored training dataset (a checked zip of images and captions), usable as `dataset` in trainings."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "upl_5d41402abc4b2a76b9719d911017c592",
                    "kind": "dataset",
                    "images": 14,
                    "captioned": 14,
                    "bytes": 912344,
                    "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                    "expires_at": "2026-11-26T19:11:12Z",
                }
            ]
        }
    )

    id: str = Field(description="Use it as `dataset` in a training.")
    kind: Literal["dataset"] = "dataset"
    images: int = Field(description="Images in the dataset.")
    captioned: int = Field(description="Images with their own caption (the others use the caption template).")
    bytes: int = Field(description="Size of the uploaded zip.")
    sha256: str = Field(description="Hash of the dataset: its image names, image hashes and captions, in order.")
    expires_at: datetime = Field(description="After this, the id can no longer be used in new trainings.")


def _dataset_view(record: DatasetRecord) -> DatasetUpload:
    return DatasetUpload(
        id=record.id, images=record.images, captioned=record.captioned, bytes=record.size_bytes,
        sha256=record.sha256, expires_at=datetime.fromtimestamp(record.expires_at, UTC),
    )  # fmt: skip


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
    response_model=Upload | DatasetUpload,
    operation_id="createUpload",
    summary="Upload an input image, a mask, or a training dataset",
    description=f"Multipart upload of one file: a PNG, JPEG or WEBP image (at most {MAX_UPLOAD_BYTES:,} bytes and "
    "4,194,304 pixels), or with `kind=dataset` a zip of training images, each with an optional same-name `.txt` "
    f"caption (at most {MAX_DATASET_BYTES:,} bytes; `docs/training.md` lists every check). It is checked and "
    "stored once; use the returned id as `image` or `mask` in your jobs, or as `dataset` in a training (it "
    "belongs to your API key: other keys cannot see or use it).",
    responses={
        201: {"headers": {"Location": {"description": "URL of the upload.", "schema": {"type": "string"}}}},
        **problem_responses(413, 422, 429, 503, 507),
    },
)
async def create_upload(
    file: Annotated[
        UploadFile, File(description="The image file, or the dataset zip.", json_schema_extra={"format": "binary"})
    ],
    state: StateDep,
    caller: CallerDep,
    response: Response,
    kind: Annotated[
        Literal["image", "mask", "dataset"], Form(description="`image`, `mask` or `dataset` (a zip).")
    ] = "image",
) -> Upload | DatasetUpload:
    await admit(state, caller, None)
    limit = MAX_DATASET_BYTES if kind == "dataset" else MAX_UPLOAD_BYTES
    data = await file.read(limit + 1)
    if kind == "dataset":
        view = await _create_dataset(state, caller.owner, data)
        response.headers["Location"] = f"{caller.base_url}/v1/uploads/{view.id}"
        return view
    if len(data) > MAX_UPLOAD_BYTES:  # the body limit fits a dataset: an image has its own, answered the same way
        raise PayloadTooLarge(f"the image file is larger than {MAX_UPLOAD_BYTES:,} bytes")
    if is_zip(data):
        raise InvalidImage("body.file", "this is a zip file: send a training dataset with kind=dataset")
    decoded = await asyncio.to_thread(decode_image, data, field="body.file", kind=kind)
    record = await state.uploads.create(decoded, kind=kind, owner=caller.owner)
    response.headers["Location"] = f"{caller.base_url}/v1/uploads/{record.id}"
    return _view(record)


async def _create_dataset(state: GatewayState, owner: str, data: bytes) -> DatasetUpload:
    """Check a dataset zip, then store and record it."""
    if len(data) > MAX_DATASET_BYTES:
        raise PayloadTooLarge(f"the dataset is larger than {MAX_DATASET_BYTES:,} bytes")
    if not is_zip(data):
        raise DatasetInvalid("body.file", "a dataset is a zip file (images, each with an optional .txt caption)")
    checked = await asyncio.to_thread(lambda: check_files(read_zip(data, "body.file"), "body.file"))
    return await dataset_upload(state, owner, checked, len(data))


async def dataset_upload(state: GatewayState, owner: str, checked: list[CheckedImage], size: int) -> DatasetUpload:
    """Store a checked dataset and record it as the caller's upload (a refused one leaves nothing); the same
    dataset sent again (same names, images and captions) is the same upload."""
    sha = dataset_hash([(c.name, c.image.sha256, c.caption) for c in checked])
    existing = await state.uploads.find_dataset(owner, sha)
    if existing is not None:
        return _dataset_view(existing)
    upload_id = new_upload_id()
    prefix = f"uploads/{upload_id}"
    try:
        manifest = await asyncio.to_thread(store_dataset, state.store, prefix, checked)
    except BaseException:
        await asyncio.to_thread(state.store.delete_prefix, prefix + "/")
        raise
    now = time.time()
    record = DatasetRecord(
        id=upload_id, prefix=prefix, manifest_key=f"{prefix}/dataset.json", images=manifest.count,
        captioned=sum(1 for i in manifest.images if i.caption), sha256=manifest.sha256, size_bytes=size,
        created_at=now, expires_at=now + state.uploads.ttl, owner=owner,
    )  # fmt: skip
    await state.uploads.add_dataset(record)
    return _dataset_view(record)


@router.get(
    "/{upload_id}",
    response_model=Upload | DatasetUpload,
    operation_id="getUpload",
    summary="Get an upload",
    description="What one of your uploads is (an image, a mask or a dataset), while its id can still be used.",
    responses=problem_responses(404, 422, 503),
)
async def get_upload(
    upload_id: Annotated[str, Path(pattern=UPLOAD_ID_PATTERN, examples=["upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0"])],
    state: StateDep,
    caller: CallerDep,
) -> Upload | DatasetUpload:
    try:
        return _view(await state.uploads.get(upload_id, caller.owner))
    except NotFound:
        return _dataset_view(await state.uploads.get_dataset(upload_id, caller.owner))
