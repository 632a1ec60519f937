"""The demo model's architecture: a small Stable Diffusion 1.x (VAE, CLIP text encoder, UNet).

Sizes were chosen for a 2-core CPU: 20 steps of the UNet at 256x256 (latents 32x32, batch 2 for
classifier-free guidance) plus one VAE decode fit in a few seconds, and the fp16 weights of all
three networks stay under 30 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LATENT_SIZE = 32
TEXT_WIDTH = 128

SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
}
"""SD's noise schedule (scaled linear betas, 1000 steps, epsilon prediction), trailing spacing."""


def make_vae() -> Any:
    """AutoencoderKL with 4 blocks (8x downsampling) and 4 latent channels, as in SD."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16,
        sample_size=256,
        scaling_factor=1.0,  # set from the latents' spread once the VAE is trained
    )


def make_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> Any:
    """A 4-layer CLIP text transformer, 128 wide (causal attention, as CLIP)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
            hidden_act="quick_gelu",
            projection_dim=TEXT_WIDTH,
        )
    )


def make_unet() -> Any:
    """UNet2DConditionModel on 32x32 latents; cross-attention only at 16x16 and 8x8."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' name for the number of heads: 4 heads of 32
        norm_num_groups=32,
    )


def make_train_scheduler() -> Any:
    """The DDPM scheduler whose ``alphas_cumprod`` the training noises with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "steps_offset"})


def make_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Any:
    """The StableDiffusionPipeline the service loads (Euler, no safety checker)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: Any, folder: Path) -> None:
    """Write ``pipe`` as an fp16 safetensors diffusers folder (the trained modules are left untouched)."""
    import copy

    half = copy.deepcopy(pipe)
    for name in ("vae", "text_encoder", "unet"):
        getattr(half, name).to(device="cpu", dtype=torch.float16)
    half.save_pretrained(folder, safe_serialization=True)
    write_vocab_and_merges(folder / "tokenizer")
    _drop_source_paths(folder)


def _drop_source_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` (the scratch folder a module was loaded from) from the saved configs."""
    import json

    for config in folder.glob("*/config.json"):
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_vocab_and_merges(tokenizer_dir: Path) -> None:
    """Write CLIP's classic ``vocab.json`` + ``merges.txt`` beside the saved ``tokenizer.json``."""
    import json

    model = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (tokenizer_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
