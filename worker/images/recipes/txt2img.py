"""txt2img: a prompt in, images out (alone, or several compatible requests in one batch)."""

from __future__ import annotations

from typing import ClassVar

from sdserve.images.requests import Task, Txt2ImgRequest
from worker.images.recipes.base import Inputs, Recipe, RecipeContext


class Txt2Img(Recipe[Txt2ImgRequest]):
    task: ClassVar[Task] = "txt2img"
    batches: ClassVar[bool] = True

    def inputs(self, ctx: RecipeContext, request: Txt2ImgRequest) -> Inputs:
        """Nothing but the size: the gateway resolved it, and the batcher grouped only equal sizes."""
        return Inputs(kind="txt2img", pipeline_args={"width": request.width, "height": request.height})
