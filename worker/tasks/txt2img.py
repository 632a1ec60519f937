"""txt2img: a prompt in, images out."""

from __future__ import annotations

from typing import cast

from sdserve.tasks import Txt2ImgRequest
from worker.tasks.base import TaskContext, TaskOutput, generate, numbered


def run(ctx: TaskContext, request: Txt2ImgRequest) -> TaskOutput:
    """Generate ``request.num_images`` images from the request's prompt."""
    # 1. Validate: the gateway resolved every default; nothing unresolved reaches the GPU.
    assert request.width and request.height

    # 2. Denoise from pure noise at the requested size, then decode.
    images, details = generate(ctx, request, "txt2img", width=request.width, height=request.height)

    # 3. Number the images with their seeds.
    return TaskOutput(images=numbered(images, cast("list[int]", details["seeds"])), details=details)
