"""Decode, check and normalise input images and masks, before any job exists.

Everything a client sends as an image passes through ``decode_image``: only PNG, JPEG and WEBP are
opened (Pillow's other decoders are never tried), the size is checked from the header *before* the
pixels are decoded (a decompression bomb costs nothing), truncated or garbage data is refused, EXIF
orientation is applied (so masks align with what the user saw), and the result is normalised to
RGB, RGBA or L. Each failure is an ``InvalidImage`` naming the field and the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from sdserve.contract.limits import MAX_PIXELS, MAX_SIDE, MAX_UPLOAD_BYTES, MIN_INPUT_SIDE
from sdserve.contract.problems import InvalidImage

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
ALLOWED_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
UploadKind = Literal["image", "mask"]
"""What an uploaded image is for: an input image, or an inpainting mask."""

_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*);base64,", re.IGNORECASE)
_BASE64_JUNK = re.compile(r"\s+")

PILLOW_PIXEL_CAP = MAX_PIXELS * 4
"""Pillow's own bomb limit while we open an image: our cap is far lower and is checked from the header first,
so Pillow's is only a second line of defence."""


@dataclass(frozen=True)
class DecodedImage:
    """A checked, normalised image and the facts the gateway keeps about it."""

    image: Image.Image
    format: str
    sha256: str
    size_bytes: int
    has_alpha: bool
    luma_max: int
    alpha_min: int

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def png(self) -> bytes:
        """The normalised image as PNG (lossless, fast compression): what the store keeps."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def _guard_pillow() -> None:
    """Cap Pillow's own bomb limit (idempotent: the same value every time, safe from any thread)."""
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > PILLOW_PIXEL_CAP:
        Image.MAX_IMAGE_PIXELS = PILLOW_PIXEL_CAP


def bytes_from_field(value: str, field: str) -> bytes:
    """The file bytes in a JSON image field: a ``data:image/...;base64,`` URI or plain base64."""
    match = _DATA_URI.match(value[:256])
    if match is not None:
        mime = match.group("mime").strip().lower()
        if mime not in ALLOWED_MIME:
            shown = mime or "(none)"
            raise InvalidImage(
                field, f"data URI type {shown!r} is not allowed; use image/png, image/jpeg or image/webp"
            )
        payload = value[match.end() :]
    elif value.startswith("data:"):
        raise InvalidImage(field, "a data URI must look like data:image/png;base64,<data>")
    else:
        payload = value
    payload = _BASE64_JUNK.sub("", payload)
    if len(payload) * 3 // 4 > MAX_UPLOAD_BYTES:
        raise InvalidImage(field, f"the image is larger than {MAX_UPLOAD_BYTES:,} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(field, "not valid base64 (or an upload id of the form upl_<32 hex digits>)") from None
    if not data:
        raise InvalidImage(field, "the image is empty")
    return data


def decode_image(data: bytes, *, field: str, kind: UploadKind) -> DecodedImage:
    """Open, check and normalise one image or mask (RGB/RGBA for images, L for masks)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidImage(field, f"the file is {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    if not data:
        raise InvalidImage(field, "the file is empty")
    try:
        _guard_pillow()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(field, "not a PNG, JPEG or WEBP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(field, f"the image has more than {MAX_PIXELS:,} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(field, f"the image header is corrupt ({exc.__class__.__name__})") from None
    width, height = opened.size
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise InvalidImage(
            field, f"the image is {width}x{height}; at most {MAX_PIXELS:,} pixels and {MAX_SIDE} per side"
        )
    if min(width, height) < MIN_INPUT_SIDE:
        raise InvalidImage(field, f"the image is {width}x{height}; each side must be at least {MIN_INPUT_SIDE}")
    if getattr(opened, "n_frames", 1) > 1:
        raise InvalidImage(field, "animated images are not supported")
    fmt = str(opened.format)
    try:
        opened.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidImage(field, "the image data is truncated or corrupt") from None
    image = ImageOps.exif_transpose(opened)
    normalised, has_alpha = _normalise(image, kind)
    luma = normalised if normalised.mode == "L" else normalised.convert("L")
    luma_max = _band_extrema(luma)[1]
    alpha_min = _band_extrema(normalised.getchannel("A"))[0] if has_alpha else 255
    return DecodedImage(
        image=normalised,
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        has_alpha=has_alpha,
        luma_max=luma_max,
        alpha_min=alpha_min,
    )


def _band_extrema(band: Image.Image) -> tuple[int, int]:
    low, high = band.getextrema()
    assert isinstance(low, int | float) and isinstance(high, int | float)
    return int(low), int(high)


def _normalise(image: Image.Image, kind: UploadKind) -> tuple[Image.Image, bool]:
    if kind == "mask":
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # A mask drawn on a transparent layer: the painted (opaque, light) strokes repaint.
            rgba = image.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(black, rgba)
        return image.convert("L"), False
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the top 8 bits
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGBA" if has_alpha else "RGB"), has_alpha
