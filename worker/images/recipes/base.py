"""What every image recipe is: its inputs (step 2 of the runner's recipe) and its post-processing (step 5).

The runner (``worker.images.runner``) does the steps every task shares: select the pipeline and LoRAs (3),
denoise (4), decode (the start of 5), store (6). A task recipe says what only it knows: what the pipeline
is given (``inputs``: the input image fitted, a mask made, a canvas built) and what becomes of the decoded
images (``post_process``: pasted back, composited with the mask, cropped).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from PIL import Image

from sdserve.images.requests import AnyRequest, Task
from sdserve.registry import Registry
from worker.models.pipelines import LoadedModel, PipelineKind

R = TypeVar("R", bound=AnyRequest)


@dataclass
class RecipeContext:
    """What a recipe may use: the warm model, the registry snapshot, the job's inputs, a timing sheet."""

    model: LoadedModel
    registry: Registry
    read_input: Callable[[str], bytes]
    timings: dict[str, float] = field(default_factory=dict)

    def input_image(self, name: str) -> Image.Image:
        """One of the job's stored inputs (checked and normalised by the gateway: RGB, RGBA or L)."""
        image = Image.open(io.BytesIO(self.read_input(name)))
        image.load()
        return image


@dataclass
class Inputs:
    """What step 2 resolved: the pipeline to run, what it is given, and what post-processing will need."""

    kind: PipelineKind
    pipeline_args: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finished:
    """A request's images after post-processing, the facts the manifest records, the mask it hands back."""

    images: list[Image.Image]
    details: dict[str, object] = field(default_factory=dict)
    mask: Image.Image | None = None


class Recipe(ABC, Generic[R]):
    """One image task's own steps."""

    task: ClassVar[Task]
    batches: ClassVar[bool] = False
    """Whether several compatible requests may share one pipeline call (txt2img)."""

    @abstractmethod
    def inputs(self, ctx: RecipeContext, request: R) -> Inputs:
        """Step 2: load and prepare the request's inputs for the pipeline."""

    def post_process(self, ctx: RecipeContext, request: R, inputs: Inputs, decoded: list[Image.Image]) -> Finished:
        """Step 5, after the decode: the task's own pixel work (none by default)."""
        return Finished(images=decoded)
