"""inpaint: repaint where the final mask says, keep every other pixel exactly."""

from __future__ import annotations

from typing import cast

from PIL import Image

from sdserve.params import GenerationParams
from sdserve.tasks import InpaintRequest
from worker.imaging import (
    alpha_mask,
    composite,
    final_mask,
    pad_to_multiple,
    padded_box,
    repaint_region,
    working_size,
)
from worker.tasks.base import TaskContext, TaskOutput, generate, numbered


def repaint(
    ctx: TaskContext,
    params: GenerationParams,
    image: Image.Image,
    mask: Image.Image,
    *,
    strength: float,
    area: str = "full",
    padding: int = 0,
) -> tuple[list[Image.Image], dict[str, object]]:
    """Inpaint ``image`` where ``mask`` (the final, soft mask) is above 0; composite with it exactly.

    ``area="masked"`` inpaints only a crop around the mask (plus ``padding``), scaled to the model's
    working size, and pastes it back. Sizes that are not multiples of 8 are processed padded and
    cropped back. Returns full-size images, and the details of the run.
    """
    image = image.convert("RGB")
    region = repaint_region(mask)  # where the model may change pixels: the soft mask's support
    if area == "masked":
        box = padded_box(mask, padding)
        crop_size = (box[2] - box[0], box[3] - box[1])
        size = working_size(crop_size, ctx.model.spec.native_size)
        work_image = image.crop(box).resize(size, Image.Resampling.LANCZOS)
        work_mask = region.crop(box).resize(size, Image.Resampling.NEAREST)
    else:
        box, size = (0, 0, *image.size), image.size
        work_image, work_mask = pad_to_multiple(image), pad_to_multiple(region)
    generated, details = generate(
        ctx,
        params,
        "inpaint",
        image=work_image,
        mask_image=work_mask,
        width=work_image.width,
        height=work_image.height,
        strength=strength,
    )
    results = []
    for gen in generated:
        if area == "masked":
            patch = gen.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
            full = image.copy()
            full.paste(patch, box[:2])
        else:
            full = gen.crop((0, 0, *image.size))
        results.append(composite(image, full, mask))
    details.update(inpaint_area=area, working_size=list(size), crop_box=list(box))
    return results, details


def run(ctx: TaskContext, request: InpaintRequest) -> TaskOutput:
    """Repaint the masked part of the image."""
    # 1. Validate: the gateway checked the mask (size, not empty) and the image (alpha, if asked for).
    image = ctx.input_image("image")

    # 2. The final mask: binary → grown → blurred.
    raw = alpha_mask(image) if request.mask_source == "alpha" else ctx.input_image("mask")
    mask = final_mask(raw, grow_px=request.mask_grow, blur_px=request.mask_blur)

    # 3. Inpaint (whole image or a crop around the mask), then composite with the final mask.
    images, details = repaint(
        ctx, request, image, mask, strength=request.strength, area=request.inpaint_area, padding=request.padding
    )

    # 4. Number the images with their seeds; hand back the mask if asked for.
    return TaskOutput(
        images=numbered(images, cast("list[int]", details["seeds"])),
        details=details,
        mask=mask if request.return_mask else None,
    )
