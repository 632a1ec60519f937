"""Pieces every image recipe shares: seeds, styled prompts, decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sdserve.contract.limits import MAX_SEED
from sdserve.images.params import GenerationParams
from sdserve.registry import Registry


@dataclass(frozen=True)
class GeneratedImage:
    """One decoded image and the seed that made it."""

    index: int
    seed: int
    image: Image.Image


def image_seeds(first: int, count: int) -> list[int]:
    """Seed of each image: ``first + i`` modulo 2**32, so any image can be reproduced alone."""
    return [(first + i) % (MAX_SEED + 1) for i in range(count)]


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same noise on every device."""
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def styled_prompts(params: GenerationParams, registry: Registry) -> tuple[str, str]:
    """The prompt and negative prompt after the request's style preset (if any)."""
    if params.style is None:
        return params.prompt, params.negative_prompt
    return registry.style(params.style).apply(params.prompt, params.negative_prompt)


@torch.inference_mode()
def decode_latents(
    pipe: Any, latents: torch.Tensor, *, upcast: bool = False, tile_min_pixels: int | None = None
) -> list[Image.Image]:
    """VAE-decode latents to PIL images (one decode call for the whole batch).

    ``upcast`` decodes in float32 when the VAE asks for it (SDXL's VAE overflows in float16); images of
    at least ``tile_min_pixels`` are decoded tile by tile (less memory, slower for small images).
    """
    vae = pipe.vae
    needs_upcast = upcast and vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    area = latents.shape[-1] * latents.shape[-2] * 64  # pixels of one image
    tiled = tile_min_pixels is not None and area >= tile_min_pixels and hasattr(vae, "enable_tiling")
    if needs_upcast:
        vae.to(torch.float32)
    if tiled:
        vae.enable_tiling()
    try:
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        scaled = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        pixels = vae.decode(scaled, return_dict=False)[0]
    finally:
        if needs_upcast:
            vae.to(torch.float16)
        if tiled:
            vae.disable_tiling()
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images
