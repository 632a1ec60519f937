"""What a task recipe receives and returns, and the denoise-then-decode step they all share."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sdserve.params import GenerationParams
from sdserve.registry import Registry
from worker.generation import GeneratedImage, decode_latents, generators, image_seeds, styled_prompts
from worker.pipelines import Kind, LoadedModel
from worker.progress import StepReporter


@dataclass
class TaskContext:
    """Everything a recipe may use: the warm model, the registry, its inputs, progress, a timing sheet."""

    job_id: str
    model: LoadedModel
    registry: Registry
    reporter: StepReporter
    read_input: Callable[[str], bytes] = field(default=lambda name: b"")
    timings: dict[str, float] = field(default_factory=dict)
    vae_tiling_min_pixels: int | None = None

    def input_image(self, name: str) -> Image.Image:
        """One of the job's stored inputs (checked and normalised by the gateway: RGB, RGBA or L)."""
        image = Image.open(io.BytesIO(self.read_input(name)))
        image.load()
        return image


@dataclass
class TaskOutput:
    """Images and the facts the manifest should record about how they were made."""

    images: list[GeneratedImage]
    details: dict[str, object] = field(default_factory=dict)
    mask: Image.Image | None = None


@torch.inference_mode()
def generate(
    ctx: TaskContext,
    params: GenerationParams,
    kind: Kind,
    *,
    batch: Sequence[GenerationParams] | None = None,
    **inputs: Any,
) -> tuple[list[Image.Image], dict[str, object]]:
    """Denoise (reporting every step) and decode: the part every task shares.

    ``batch`` runs several compatible requests (same size, steps, scheduler, guidance, adapters) as one
    pipeline call, each with its own prompts and seeds; ``params`` is the first of them. ``inputs`` go
    to the pipeline as they are (``image``, ``mask_image``, ``strength``, ``width``, ...). Returns the
    decoded images, one per seed in request order, and the prompts and scheduler that were used.
    """
    members = batch or [params]
    assert params.steps and params.scheduler and params.guidance_scale is not None
    prompts: list[str] = []
    negatives: list[str] = []
    seeds: list[int] = []
    for member in members:
        assert member.seed is not None
        prompt, negative = styled_prompts(member, ctx.registry)
        prompts += [prompt] * member.num_images
        negatives += [negative] * member.num_images
        seeds += image_seeds(member.seed, member.num_images)

    started = time.perf_counter()
    pipe = ctx.model.view(params.scheduler, kind)
    ctx.timings["load_ms"] = ctx.timings.get("load_ms", 0.0) + (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    latents = pipe(
        prompt=prompts,
        negative_prompt=negatives if any(negatives) else None,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        num_images_per_prompt=1,
        generator=generators(seeds),
        output_type="latent",
        callback_on_step_end=ctx.reporter,
        **inputs,
    ).images
    ctx.timings["inference_ms"] = ctx.timings.get("inference_ms", 0.0) + (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    images = decode_latents(
        pipe, latents, upcast=ctx.model.spec.family == "sdxl", tile_min_pixels=ctx.vae_tiling_min_pixels
    )
    ctx.timings["decode_ms"] = ctx.timings.get("decode_ms", 0.0) + (time.perf_counter() - started) * 1000
    details: dict[str, object] = {
        "prompt": prompts[0],
        "negative_prompt": negatives[0],
        "scheduler_class": type(pipe.scheduler).__name__,
        "pipeline_class": type(pipe).__name__,
        "seeds": seeds,
        "batch_size": len(seeds),
    }
    return images, details


def numbered(images: list[Image.Image], seeds: list[int]) -> list[GeneratedImage]:
    """Pair images with their seeds and positions."""
    return [GeneratedImage(index=i, seed=s, image=img) for i, (s, img) in enumerate(zip(seeds, images, strict=True))]
