"""The request of each task, and their union (discriminated on ``task``).

Image inputs (``image``, ``mask``) are strings: a base64 image, a ``data:image/...;base64,`` URI, or the
id of a ``POST /v1/uploads`` upload (``upl_…``). The gateway decodes and checks every image before a
job exists, stores it once, and replaces the field with an upload id: the resolved request that a
worker runs, and that ``GET /v1/jobs/{id}`` shows, never carries pixels.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, StringConstraints, TypeAdapter, model_validator

from sdserve.contract.limits import (
    MAX_FEATHER,
    MAX_IMAGE_FIELD_CHARS,
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_MASK_GROW,
    MAX_OUTPAINT_MARGIN,
    MAX_PIXELS,
    MAX_SIDE,
    MIN_SIDE,
)
from sdserve.images.params import GenerationParams

ImageInput = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_IMAGE_FIELD_CHARS),
    Field(
        description="A PNG, JPEG or WEBP image: base64, a `data:image/png;base64,...` URI, or the id of an "
        "upload (`upl_...`, from `POST /v1/uploads`). EXIF orientation is applied.",
        examples=["upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0"],
    ),
]

Strength = Annotated[
    float,
    Field(
        strict=True, gt=0.0, le=1.0, description="How far to depart from the input: near 0 keeps it, 1 repaints fully."
    ),
]

_SIZE_SET_BY_IMAGE = (
    "Output {dim} in pixels. Set by the input image{extra}; if given, it must equal that. "
    "The worker processes sizes that are not multiples of 8 on a canvas padded to the next multiple of 8 "
    "and crops the padding away."
)


class Txt2ImgRequest(GenerationParams):
    """Generate images from a text prompt."""

    task: Literal["txt2img"] = Field(default="txt2img", description="Always `txt2img` on this endpoint.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 12},
                {
                    "prompt": "a red fox in the snow, detailed",
                    "negative_prompt": "blurry",
                    "model": "tiny",
                    "num_images": 2,
                    "seed": 42,
                    "scheduler": "dpmpp_2m_karras",
                    "guidance_scale": 6.5,
                    "output": {"format": "png"},
                    "metadata": {"user": "u-123"},
                },
            ]
        },
    )


class Img2ImgRequest(GenerationParams):
    """Transform an image guided by a prompt."""

    task: Literal["img2img"] = Field(default="img2img", description="Always `img2img` on this endpoint.")
    image: ImageInput
    strength: Strength = 0.75
    resize_mode: Literal["resize", "crop", "fill"] = Field(
        default="resize",
        description="When width/height differ from the image: `resize` stretches it to the size, `crop` scales "
        "it to cover the size and cuts the overflow (centred), `fill` scales it to fit inside and fills the rest "
        "with its blurred edges.",
    )
    width: int | None = Field(strict=True,
        default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
        description=f"Output width, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. Default: the image's width "
        "rounded to the nearest multiple of 8.",
    )  # fmt: skip
    height: int | None = Field(strict=True,
        default=None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
        description=f"Output height, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. Default: the image's "
        "height rounded to the nearest multiple of 8.",
    )  # fmt: skip

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a watercolor painting of a harbour",
                    "image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "strength": 0.6,
                    "steps": 20,
                },
                {
                    "prompt": "the same scene at night",
                    "image": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4"
                    "z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==",
                    "width": 512,
                    "height": 384,
                    "resize_mode": "crop",
                },
            ]
        },
    )


class InpaintRequest(GenerationParams):
    """Repaint the masked part of an image; the rest stays exactly as it was."""

    task: Literal["inpaint"] = Field(default="inpaint", description="Always `inpaint` on this endpoint.")
    image: ImageInput
    mask: ImageInput | None = Field(
        default=None,
        description="Same size as the image: white (≥ 128) repaints, black keeps. Required unless "
        "`mask_source` is `alpha`.",
    )
    mask_source: Literal["mask", "alpha"] = Field(
        default="mask",
        description="`alpha`: repaint where the image is transparent (alpha < 128); no `mask`.",
    )
    mask_grow: int = Field(
        strict=True, default=0, ge=0, le=MAX_MASK_GROW, description="Grow (dilate) the mask by this many px."
    )
    mask_blur: int = Field(
        strict=True,
        default=4,
        ge=0,
        le=MAX_MASK_BLUR,
        description="Gaussian blur radius of the mask's edge, in px (after growing).",
    )
    strength: Strength = 1.0
    inpaint_area: Literal["full", "masked"] = Field(
        default="full",
        description="`full` repaints on the whole image; `masked` crops around the mask (plus `padding`), "
        "inpaints that crop at the model's working size and pastes it back.",
    )
    padding: int = Field(
        strict=True,
        default=32,
        ge=0,
        le=MAX_INPAINT_PADDING,
        description="Context around the mask for `inpaint_area: masked`.",
    )
    return_mask: bool = Field(default=False, description="Also return the final mask actually used (`mask_url`).")
    width: int | None = Field(strict=True, default=None, description=_SIZE_SET_BY_IMAGE.format(dim="width", extra=""))
    height: int | None = Field(strict=True, default=None, description=_SIZE_SET_BY_IMAGE.format(dim="height", extra=""))

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a yellow star",
                    "image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "mask": "upl_9a8b7c6d5e4f30211203f4e5d6c7b8a9",
                    "mask_blur": 4,
                    "return_mask": True,
                },
                {
                    "prompt": "a clear blue sky",
                    "image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "mask_source": "alpha",
                    "inpaint_area": "masked",
                    "padding": 48,
                },
            ]
        },
    )

    @model_validator(mode="after")
    def _mask_present(self) -> InpaintRequest:
        if self.mask_source == "mask" and self.mask is None:
            raise ValueError("`mask` is required unless `mask_source` is `alpha`")
        if self.mask_source == "alpha" and self.mask is not None:
            raise ValueError("give either `mask` or `mask_source: alpha`, not both")
        return self


class OutpaintRequest(GenerationParams):
    """Extend an image beyond its borders; the original pixels stay as they were."""

    task: Literal["outpaint"] = Field(default="outpaint", description="Always `outpaint` on this endpoint.")
    image: ImageInput
    left: int = Field(strict=True, default=0, ge=0, le=MAX_OUTPAINT_MARGIN, description="Pixels to add on the left.")
    right: int = Field(strict=True, default=0, ge=0, le=MAX_OUTPAINT_MARGIN, description="Pixels to add on the right.")
    top: int = Field(strict=True, default=0, ge=0, le=MAX_OUTPAINT_MARGIN, description="Pixels to add at the top.")
    bottom: int = Field(
        strict=True, default=0, ge=0, le=MAX_OUTPAINT_MARGIN, description="Pixels to add at the bottom."
    )
    fill: Literal["edge", "blur", "noise"] = Field(
        default="blur",
        description="How the new area starts before denoising: `edge` repeats the border pixels, `blur` blurs "
        "them heavily, `noise` adds seeded noise around the border colours.",
    )
    feather: int = Field(strict=True,
        default=16, ge=0, le=MAX_FEATHER,
        description="Width of the seam band inside the original image that is blended with the new area; "
        "original pixels farther from the new area than this are unchanged.",
    )  # fmt: skip
    strength: Strength = 1.0
    return_mask: bool = Field(default=False, description="Also return the mask actually used (`mask_url`).")
    width: int | None = Field(
        strict=True, default=None, description=_SIZE_SET_BY_IMAGE.format(dim="width", extra=" plus `left` and `right`")
    )
    height: int | None = Field(
        strict=True, default=None, description=_SIZE_SET_BY_IMAGE.format(dim="height", extra=" plus `top` and `bottom`")
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a wide beach at sunset",
                    "image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    "left": 128,
                    "right": 128,
                    "fill": "blur",
                    "feather": 16,
                }
            ]
        },
    )

    @model_validator(mode="after")
    def _some_margin(self) -> OutpaintRequest:
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("at least one of left, right, top, bottom must be positive")
        return self


AnyRequest = Txt2ImgRequest | Img2ImgRequest | InpaintRequest | OutpaintRequest
JobRequest = Annotated[AnyRequest, Discriminator("task")]
"""Every task's request model, discriminated on ``task``."""

ImageInputRequest = Img2ImgRequest | InpaintRequest | OutpaintRequest
"""The tasks that take an input image."""

Task = Literal["txt2img", "img2img", "inpaint", "outpaint"]

REQUEST_MODELS: dict[Task, type[AnyRequest]] = {
    "txt2img": Txt2ImgRequest,
    "img2img": Img2ImgRequest,
    "inpaint": InpaintRequest,
    "outpaint": OutpaintRequest,
}

_REQUEST_ADAPTER: TypeAdapter[AnyRequest] = TypeAdapter(JobRequest)


def parse_request(data: object) -> AnyRequest:
    """Validate a stored (or client) request of any task."""
    return _REQUEST_ADAPTER.validate_python(data)
