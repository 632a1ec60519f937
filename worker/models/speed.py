"""Speed settings of a loaded pipeline: memory format, fused projections, torch.compile, VAE tiling.

Each is a setting with a default that is right for most deployments, and each is measured by
``bench/gpu.py``. Compilation happens at warm-up, for the shapes a worker expects
(``compile_batch_sizes`` at the model's native size), so the first job does not pay for it; the
inductor cache under ``compile_cache_dir`` lets a restarted worker reuse compiled kernels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdserve.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedOptions:
    """What to do to a freshly loaded pipeline."""

    channels_last: bool = True
    fuse_qkv: bool = False
    compile_mode: str = "off"
    compile_batch_sizes: list[int] = field(default_factory=lambda: [1])
    vae_tiling_min_pixels: int = 2048 * 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeedOptions:
        return cls(
            channels_last=settings.channels_last,
            fuse_qkv=settings.fuse_qkv,
            compile_mode=settings.compile_mode,
            compile_batch_sizes=list(settings.compile_batch_sizes),
            vae_tiling_min_pixels=settings.vae_tiling_min_pixels,
        )


def use_compile_cache(folder: Path) -> None:
    """Point inductor's on-disk caches at ``folder`` (read by torch when it compiles)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def optimize(pipe: Any, device: torch.device, options: SpeedOptions) -> dict[str, object]:
    """Apply the options to a pipeline; returns what was applied (for logs and manifests)."""
    applied: dict[str, object] = {}
    if options.channels_last and device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if options.fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()
        applied["fused_qkv"] = True
    if options.compile_mode != "off":
        mode = None if options.compile_mode == "default" else options.compile_mode
        pipe.unet = torch.compile(pipe.unet, mode=mode)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)
        applied["compile"] = options.compile_mode
    return applied


def is_fused(pipe: Any) -> bool:
    """Whether the UNet's attention projections are fused now."""
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    return getattr(unet, "original_attn_processors", None) is not None
