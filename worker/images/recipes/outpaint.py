"""outpaint: extend the canvas by exact margins and paint the new area; the original stays."""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from sdserve.images.requests import OutpaintRequest, Task
from worker.images.imaging import outpaint_canvas
from worker.images.recipes.base import Finished, Inputs, Recipe, RecipeContext
from worker.images.recipes.inpaint import repaint_finish, repaint_inputs


class Outpaint(Recipe[OutpaintRequest]):
    task: ClassVar[Task] = "outpaint"

    def inputs(self, ctx: RecipeContext, request: OutpaintRequest) -> Inputs:
        """The canvas (the image at (left, top), the new area pre-filled) and its mask (new area + seam)."""
        assert request.seed is not None, "the gateway resolved the seed"
        canvas, mask = outpaint_canvas(
            ctx.input_image("image").convert("RGB"),
            left=request.left, right=request.right, top=request.top, bottom=request.bottom,
            fill=request.fill, feather=request.feather, seed=request.seed,
        )  # fmt: skip
        inputs = repaint_inputs(ctx, canvas, mask, strength=request.strength)
        inputs.state["details"].update(
            fill=request.fill, margins=[request.left, request.right, request.top, request.bottom]
        )
        return inputs

    def post_process(
        self, ctx: RecipeContext, request: OutpaintRequest, inputs: Inputs, decoded: list[Image.Image]
    ) -> Finished:
        """Composite the canvas with the mask; hand the mask back if asked for."""
        return Finished(
            images=repaint_finish(inputs, decoded),
            details=dict(inputs.state["details"]),
            mask=inputs.state["mask"] if request.return_mask else None,
        )
