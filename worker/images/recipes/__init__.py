"""Each image task's own steps: txt2img, img2img, inpaint, outpaint."""

from __future__ import annotations

from typing import Any

from sdserve.images.requests import Task
from worker.images.recipes.base import Recipe
from worker.images.recipes.img2img import Img2Img
from worker.images.recipes.inpaint import Inpaint
from worker.images.recipes.outpaint import Outpaint
from worker.images.recipes.txt2img import Txt2Img

RECIPES: dict[Task, Recipe[Any]] = {recipe.task: recipe for recipe in (Txt2Img(), Img2Img(), Inpaint(), Outpaint())}
"""The recipe of each task."""
