"""inpaint: repaint where the final mask says, keep every other pixel exactly."""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from sdserve.images.requests import InpaintRequest, Task
from worker.images.imaging import (
    alpha_mask,
    composite,
    final_mask,
    pad_to_multiple,
    padded_box,
    repaint_region,
    working_size,
)
from worker.images.recipes.base import Finished, Inputs, Recipe, RecipeContext


def repaint_inputs(
    ctx: RecipeContext, image: Image.Image, mask: Image.Image, *, strength: float, area: str = "full", padding: int = 0
) -> Inputs:
    """The inpainting call for ``image`` and its final (soft) mask.

    ``area="masked"`` inpaints only a crop around the mask (plus ``padding``), scaled to the model's working
    size; sizes that are not multiples of 8 are processed padded (and cropped back in ``repaint_finish``).
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
    return Inputs(
        kind="inpaint",
        pipeline_args={
            "image": work_image, "mask_image": work_mask, "width": work_image.width, "height": work_image.height,
            "strength": strength,
        },
        state={"image": image, "mask": mask, "box": box, "area": area,
               "details": {"inpaint_area": area, "working_size": list(size), "crop_box": list(box)}},
    )  # fmt: skip


def repaint_finish(inputs: Inputs, decoded: list[Image.Image]) -> list[Image.Image]:
    """Bring each generated image back to the original's frame and composite it with the final mask exactly."""
    image, mask, box, area = (inputs.state[k] for k in ("image", "mask", "box", "area"))
    results = []
    for generated in decoded:
        if area == "masked":
            patch = generated.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
            full = image.copy()
            full.paste(patch, box[:2])
        else:
            full = generated.crop((0, 0, *image.size))
        results.append(composite(image, full, mask))
    return results


class Inpaint(Recipe[InpaintRequest]):
    task: ClassVar[Task] = "inpaint"

    def inputs(self, ctx: RecipeContext, request: InpaintRequest) -> Inputs:
        """The image and its final mask: binary → grown → blurred (the gateway checked both)."""
        image = ctx.input_image("image")
        raw = alpha_mask(image) if request.mask_source == "alpha" else ctx.input_image("mask")
        mask = final_mask(raw, grow_px=request.mask_grow, blur_px=request.mask_blur)
        return repaint_inputs(
            ctx, image, mask, strength=request.strength, area=request.inpaint_area, padding=request.padding
        )

    def post_process(
        self, ctx: RecipeContext, request: InpaintRequest, inputs: Inputs, decoded: list[Image.Image]
    ) -> Finished:
        """Composite with the final mask; hand the mask back if asked for."""
        return Finished(
            images=repaint_finish(inputs, decoded),
            details=dict(inputs.state["details"]),
            mask=inputs.state["mask"] if request.return_mask else None,
        )
