"""img2img: an image and a prompt in; the image, transformed as far as ``strength`` says, out."""

from __future__ import annotations

from typing import ClassVar

from sdserve.images.requests import Img2ImgRequest, Task
from worker.images.imaging import fit
from worker.images.recipes.base import Inputs, Recipe, RecipeContext


class Img2Img(Recipe[Img2ImgRequest]):
    task: ClassVar[Task] = "img2img"

    def inputs(self, ctx: RecipeContext, request: Img2ImgRequest) -> Inputs:
        """The input brought to the output size (resize, crop or fill), to be noised to ``strength``."""
        assert request.width and request.height, "the gateway resolved the output size"
        image = fit(ctx.input_image("image"), (request.width, request.height), request.resize_mode)
        return Inputs(
            kind="img2img",
            pipeline_args={"image": image, "strength": request.strength},
            state={"details": {"resize_mode": request.resize_mode}},
        )
