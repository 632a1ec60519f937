"""The real SD 1.5 and SDXL architectures with random weights, for the GPU benchmarks (``bench/gpu.py``,
``bench/train.py``): their configurations (``gpu-baseline.md``), a tiny version of each for ``--smoke`` runs on the
CPU, a builder that saves a random-weight pipeline folder, and the measured matrix rate."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}  # fmt: skip
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
    "cross_attention_dim": 2048, "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "use_linear_projection": True,
}  # fmt: skip
VAE: dict[str, Any] = {
    "latent_channels": 4, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}  # fmt: skip
CLIP_L = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
CLIP_G = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 20, "intermediate_size": 5120}


def shrink(config: dict[str, Any]) -> dict[str, Any]:
    """A tiny version of an architecture, for --smoke on the CPU."""
    small = dict(config)
    if "block_out_channels" in small:
        small["block_out_channels"] = tuple(32 for _ in small["block_out_channels"])
        small["layers_per_block"] = 1
    if "cross_attention_dim" in small:
        small["cross_attention_dim"] = 64 if small["cross_attention_dim"] == 2048 else 32
        small["attention_head_dim"] = 8 if isinstance(small["attention_head_dim"], int) else (8, 8, 8)
        small["norm_num_groups"] = 8
    if "transformer_layers_per_block" in small:
        small["transformer_layers_per_block"] = (1, 1, 1)
        small["addition_time_embed_dim"] = 8
        small["projection_class_embeddings_input_dim"] = 32 + 6 * 8
    if "latent_channels" in small:
        small["norm_num_groups"] = 8
    if "hidden_size" in small:
        small.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return small


def build(family: str, folder: Path, smoke: bool) -> Path:
    """Random-weight pipeline of the family's real architecture, saved with save_pretrained (fp16)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.models.builtin import tiny_tokenizer_files

    fit = shrink if smoke else (lambda c: c)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    vocab, merges = tiny_tokenizer_files()  # a real CLIP BPE tokenizer; its ids fit the 49408-token tables
    tok_dir = folder / "_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=77
    )

    def text_config(shape: dict[str, Any], projection: int | None = None) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, **fit(shape),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, projection_dim=projection or 768,
        )  # fmt: skip

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    with torch.device(device):
        torch.manual_seed(0)
        vae = AutoencoderKL(**fit(VAE), scaling_factor=0.13025 if family == "sdxl" else 0.18215)
        if family == "sdxl":
            unet = UNet2DConditionModel(**fit(SDXL_UNET))
            pipe: Any = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=CLIPTextModel(text_config(CLIP_L)),
                text_encoder_2=CLIPTextModelWithProjection(text_config(CLIP_G, 32 if smoke else 1280)),
                tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
            )  # fmt: skip
        else:
            unet = UNet2DConditionModel(**fit(SD15_UNET))
            pipe = StableDiffusionPipeline(
                vae=vae, text_encoder=CLIPTextModel(text_config(CLIP_L)), tokenizer=tokenizer, unet=unet,
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )  # fmt: skip
    pipe.to(dtype)
    target = folder / family
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def matmul_rate(smoke: bool) -> float:
    """Measured bf16 matrix rate, FLOP/s (8192³ products on random data)."""
    if smoke or not torch.cuda.is_available():
        return 1e12
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * 8192**3 / (time.perf_counter() - started)
