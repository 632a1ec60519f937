"""txt2img: a prompt in, images out (alone, or several compatible requests in one batch)."""

from __future__ import annotations

from typing import cast

from sdserve.tasks import Txt2ImgRequest
from worker.tasks.base import TaskContext, TaskOutput, generate, numbered


def run(ctx: TaskContext, request: Txt2ImgRequest) -> TaskOutput:
    """Generate ``request.num_images`` images from the request's prompt."""
    return run_batch(ctx, [request])[0]


def run_batch(ctx: TaskContext, requests: list[Txt2ImgRequest]) -> list[TaskOutput]:
    """Generate the images of several compatible requests in one pipeline call; one output per request."""
    # 1. Validate: the gateway resolved every default; the batcher grouped only compatible requests.
    first = requests[0]
    assert first.width and first.height
    assert all((r.width, r.height, r.steps, r.scheduler, r.guidance_scale) == (
        first.width, first.height, first.steps, first.scheduler, first.guidance_scale) for r in requests)  # fmt: skip

    # 2. Denoise from pure noise at the requested size (each request its prompts and seeds), then decode.
    images, details = generate(ctx, first, "txt2img", batch=requests, width=first.width, height=first.height)

    # 3. Split the batch back into requests, numbering each request's images with their seeds.
    seeds = cast("list[int]", details["seeds"])
    outputs, offset = [], 0
    for request in requests:
        count = request.num_images
        own_seeds = seeds[offset : offset + count]
        own = TaskOutput(
            images=numbered(images[offset : offset + count], own_seeds), details={**details, "seeds": own_seeds}
        )
        outputs.append(own)
        offset += count
    return outputs
