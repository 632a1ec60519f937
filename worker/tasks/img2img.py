"""img2img: an image and a prompt in; the image, transformed as far as ``strength`` says, out."""

from __future__ import annotations

from typing import cast

from sdserve.tasks import Img2ImgRequest
from worker.imaging import fit
from worker.tasks.base import TaskContext, TaskOutput, generate, numbered


def run(ctx: TaskContext, request: Img2ImgRequest) -> TaskOutput:
    """Noise the input to ``strength`` and denoise it back under the prompt."""
    # 1. Validate: the gateway resolved the output size (a multiple of 8) and checked steps × strength.
    assert request.width and request.height

    # 2. Load the input and bring it to the output size (resize, crop or fill).
    image = fit(ctx.input_image("image"), (request.width, request.height), request.resize_mode)

    # 3. Denoise from the noised input, then decode.
    images, details = generate(ctx, request, "img2img", image=image, strength=request.strength)

    # 4. Number the images with their seeds.
    details["resize_mode"] = request.resize_mode
    return TaskOutput(images=numbered(images, cast("list[int]", details["seeds"])), details=details)
