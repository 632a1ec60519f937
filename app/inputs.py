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

from sdserve.errors import NotFound
from sdserve.images import MASK_THRESHOLD, DecodedImage, InvalidImage, Kind, bytes_from_field, decode_image
from sdserve.limits import UPLOAD_ID_PATTERN
from sdserve.store import input_key
from sdserve.tasks import Img2ImgRequest, InpaintRequest, OutpaintRequest
from sdserve.uploads import UploadRecord, Uploads

_UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)

ImageTask = Img2ImgRequest | InpaintRequest | OutpaintRequest


@dataclass(frozen=True)
class ResolvedInputs:
    """The stored inputs of a job."""

    image: UploadRecord
    mask: UploadRecord | None

    def keys(self) -> dict[str, str]:
        keys = {"image": self.image.key}
        if self.mask is not None:
            keys["mask"] = self.mask.key
        return keys


async def _load(value: str, *, field: str, kind: Kind, uploads: Uploads) -> UploadRecord | DecodedImage:
    if _UPLOAD_ID.fullmatch(value):
        try:
            return await uploads.get(value)
        except NotFound:
            raise InvalidImage(field, f"no upload {value} (unknown or expired)") from None
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

    async def store(self, *, job_id: str, uploads: Uploads, owner: str | None) -> ResolvedInputs:
        """Write the inline inputs under ``inputs/<job>/`` (uploads are already stored)."""

        async def stored(item: UploadRecord | DecodedImage, name: Kind) -> UploadRecord:
            if isinstance(item, UploadRecord):
                return item
            key = input_key(job_id, f"{name}.png")
            return await uploads.create(item, kind=name, key=key, owner=owner, job_id=job_id)

        return ResolvedInputs(
            image=await stored(self.image, "image"),
            mask=await stored(self.mask, "mask") if self.mask is not None else None,
        )


async def check_inputs(request: ImageTask, *, uploads: Uploads) -> CheckedInputs:
    """Decode (or look up) and check every input of a job; stores nothing."""
    image = await _load(request.image, field="body.image", kind="image", uploads=uploads)
    mask = None
    if isinstance(request, InpaintRequest):
        if request.mask is not None:
            mask = await _load(request.mask, field="body.mask", kind="mask", uploads=uploads)
        _check_mask(request, image, mask)
    return CheckedInputs(image=image, mask=mask)
