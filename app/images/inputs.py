"""Image inputs of a job: decode and check them all, then store each once.

An input is either the id of an earlier upload or an image inline in the body. Inline images are
decoded in a worker thread (the event loop never decodes), every check runs before anything is
stored, and only then are the new ones written, under ``inputs/<job>/``. The job carries upload
ids; its record maps each input to the object key the worker reads.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from app.uploads.images import DecodedImage, UploadKind, bytes_from_field, decode_image
from app.uploads.store import UploadRecord, Uploads
from sdserve.contract.limits import MASK_THRESHOLD, UPLOAD_ID_PATTERN
from sdserve.contract.problems import InvalidImage, NotFound, UnusableInput
from sdserve.images.requests import ImageInputRequest, InpaintRequest
from sdserve.storage.base import input_key

_UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)


@dataclass(frozen=True)
class ResolvedInputs:
    """The stored inputs of a job."""

    image: UploadRecord
    mask: UploadRecord | None

    def keys(self) -> dict[str, str]:
        """Input name → the object key the worker reads."""
        keys = {"image": self.image.key}
        if self.mask is not None:
            keys["mask"] = self.mask.key
        return keys

    def ids(self) -> list[str]:
        """The upload ids the job uses (they stop working when the job is deleted)."""
        return [self.image.id] + ([self.mask.id] if self.mask is not None else [])


async def _load(
    value: str, *, field: str, kind: UploadKind, uploads: Uploads, owner: str
) -> UploadRecord | DecodedImage:
    if _UPLOAD_ID.fullmatch(value):
        try:
            return await uploads.get(value, owner)
        except NotFound:
            raise UnusableInput(
                field, f"no upload {value} of yours (unknown, expired, or deleted with a job)"
            ) from None
    data = await asyncio.to_thread(bytes_from_field, value, field)
    return await asyncio.to_thread(decode_image, data, field=field, kind=kind)


def _check_mask(
    request: InpaintRequest, image: UploadRecord | DecodedImage, mask: UploadRecord | DecodedImage | None
) -> None:
    if request.mask_source == "alpha":
        if not image.has_alpha:
            raise InvalidImage("body.image", "mask_source is alpha but the image has no alpha channel")
        if image.alpha_min >= MASK_THRESHOLD:
            raise InvalidImage("body.image", "mask_source is alpha but the image is opaque: nothing to repaint")
        return
    assert mask is not None
    if (mask.width, mask.height) != (image.width, image.height):
        raise InvalidImage(
            "body.mask", f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}"
        )
    if mask.luma_max < MASK_THRESHOLD:
        raise InvalidImage("body.mask", "the mask is all black: nothing to repaint (white marks what to repaint)")


@dataclass(frozen=True)
class CheckedInputs:
    """A job's inputs, decoded and checked, not stored yet."""

    image: UploadRecord | DecodedImage
    mask: UploadRecord | DecodedImage | None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.width, self.image.height

    async def store(self, *, job_id: str, uploads: Uploads, owner: str) -> ResolvedInputs:
        """Write the inline inputs under ``inputs/<job>/`` (uploads are already stored)."""

        async def stored(item: UploadRecord | DecodedImage, name: UploadKind) -> UploadRecord:
            if isinstance(item, UploadRecord):
                return item
            key = input_key(job_id, f"{name}.png")
            return await uploads.create(item, kind=name, key=key, owner=owner, job_id=job_id)

        return ResolvedInputs(
            image=await stored(self.image, "image"),
            mask=await stored(self.mask, "mask") if self.mask is not None else None,
        )


async def check_inputs(request: ImageInputRequest, *, uploads: Uploads, owner: str) -> CheckedInputs:
    """Decode (or look up, among the caller's own uploads) and check every input of a job; stores nothing."""
    image = await _load(request.image, field="body.image", kind="image", uploads=uploads, owner=owner)
    mask = None
    if isinstance(request, InpaintRequest):
        if request.mask is not None:
            mask = await _load(request.mask, field="body.mask", kind="mask", uploads=uploads, owner=owner)
        _check_mask(request, image, mask)
    return CheckedInputs(image=image, mask=mask)
