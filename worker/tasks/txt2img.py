"""txt2img: a prompt in, images out."""

from __future__ import annotations

import time

import torch

from sdserve.tasks import Txt2ImgRequest
from worker.generation import GeneratedImage, decode_latents, generators, image_seeds, styled_prompts
from worker.tasks.base import TaskContext, TaskOutput


@torch.inference_mode()
def run(ctx: TaskContext, request: Txt2ImgRequest) -> TaskOutput:
    """Generate ``request.num_images`` images from the request's prompt."""
    # 1. Validate: the gateway resolved every default; refuse anything unresolved before GPU work.
    assert request.width and request.height and request.steps and request.scheduler
    assert request.seed is not None and request.guidance_scale is not None

    # 2. Prompts and seeds.
    prompt, negative = styled_prompts(request, ctx.registry)
    seeds = image_seeds(request.seed, request.num_images)

    # 3. Pipeline: the warm weights with a fresh scheduler of the requested kind.
    started = time.perf_counter()
    pipe = ctx.model.view(request.scheduler)
    ctx.timings["load_ms"] = (time.perf_counter() - started) * 1000

    # 4. Denoise to latents, reporting every step (and stopping if the job is canceled).
    started = time.perf_counter()
    latents = pipe(
        prompt=prompt,
        negative_prompt=negative or None,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.num_images,
        generator=generators(seeds),
        output_type="latent",
        callback_on_step_end=ctx.reporter,
    ).images
    ctx.timings["inference_ms"] = (time.perf_counter() - started) * 1000

    # 5. Decode.
    started = time.perf_counter()
    images = decode_latents(pipe, latents, upcast=ctx.model.spec.family == "sdxl")
    ctx.timings["decode_ms"] = (time.perf_counter() - started) * 1000

    return TaskOutput(
        images=[
            GeneratedImage(index=i, seed=s, image=img)
            for i, (s, img) in enumerate(zip(seeds, images, strict=True))
        ],
        details={
            "prompt": prompt,
            "negative_prompt": negative,
            "scheduler_class": type(pipe.scheduler).__name__,
        },
    )
