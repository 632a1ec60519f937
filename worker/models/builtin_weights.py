"""Demo LoRAs and an embedding for the built-in models, generated offline from a fixed seed (like the models).

* ``tiny-detail``: a LoRA for ``tiny`` in the diffusers/PEFT key layout (UNet and text encoder);
* ``tiny-kohya``: a LoRA for ``tiny`` in the kohya/A1111 key layout (``lora_unet_…lora_down/up`` + alpha);
* ``tiny-sdxl-detail``: a LoRA for ``tiny-sdxl`` (UNet and both text encoders);
* ``demo-detail``: a LoRA for ``demo`` in the diffusers/PEFT layout (so swaps can be tried on the default model);
* ``tiny-sparkle``: a textual-inversion embedding for ``tiny`` (A1111 ``emb_params`` layout).

Weights are random but scaled so that each visibly changes what the model draws. Files are written once
under ``<models_dir>/weights/`` and loaded through diffusers' normal loaders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from worker.models.builtin import ensure_builtin

WEIGHTS_VERSION = "v1"
RANK = 4
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linear_shapes(module: torch.nn.Module, suffixes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {
        name: (m.out_features, m.in_features)
        for name, m in module.named_modules()
        if name.endswith(suffixes) and isinstance(m, torch.nn.Linear)
    }


def _pair(gen: torch.Generator, out_f: int, in_f: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, in_f, generator=gen) / in_f**0.5
    up = torch.randn(out_f, RANK, generator=gen) * strength / RANK**0.5
    return down, up


def _load_components(model: str, models_dir: Path) -> Any:
    import diffusers

    folder = ensure_builtin(model, models_dir)
    cls = diffusers.StableDiffusionXLPipeline if model == "tiny-sdxl" else diffusers.StableDiffusionPipeline
    return cls.from_pretrained(folder, use_safetensors=True)


def _peft_lora(model: str, seed: int, models_dir: Path, target: Path) -> None:
    pipe = _load_components(model, models_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    parts = [("unet", pipe.unet, _ATTENTION, 0.6), ("text_encoder", pipe.text_encoder, _TEXT_ATTENTION, 0.3)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        parts.append(("text_encoder_2", pipe.text_encoder_2, _TEXT_ATTENTION, 0.3))
    for prefix, module, suffixes, strength in parts:
        for name, (out_f, in_f) in sorted(_linear_shapes(module, suffixes).items()):
            down, up = _pair(gen, out_f, in_f, strength)
            tensors[f"{prefix}.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"{prefix}.{name}.lora_B.weight"] = up.contiguous()
    save_file(tensors, str(target), metadata={"format": "pt"})


def _kohya_lora(model: str, seed: int, models_dir: Path, target: Path) -> None:
    pipe = _load_components(model, models_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, (out_f, in_f) in sorted(_linear_shapes(pipe.unet, _ATTENTION).items()):
        down, up = _pair(gen, out_f, in_f, 0.6)
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(tensors, str(target), metadata={"ss_network_module": "networks.lora"})


def _embedding(model: str, seed: int, models_dir: Path, target: Path) -> None:
    pipe = _load_components(model, models_dir)
    table = pipe.text_encoder.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(2, table.shape[1], generator=gen) * table.std() * 3
    save_file({"emb_params": vectors.contiguous()}, str(target))


BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "tiny-detail": lambda md, t: _peft_lora("tiny", 11, md, t),
    "tiny-kohya": lambda md, t: _kohya_lora("tiny", 12, md, t),
    "tiny-sdxl-detail": lambda md, t: _peft_lora("tiny-sdxl", 13, md, t),
    "demo-detail": lambda md, t: _peft_lora("demo", 15, md, t),
    "tiny-sparkle": lambda md, t: _embedding("tiny", 14, md, t),
}


def ensure_builtin_file(name: str, models_dir: Path) -> Path:
    """The .safetensors file of a built-in LoRA or embedding, generated on first use."""
    try:
        build = BUILDERS[name]
    except KeyError:
        raise ValueError(f"no built-in LoRA or embedding {name!r}") from None
    folder = models_dir / "weights"
    target = folder / f"{name}-{WEIGHTS_VERSION}.safetensors"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{target.name}.{os.getpid()}.tmp"
    build(models_dir, staging)
    os.replace(staging, target)  # several workers may race: each writes the same bytes, one rename wins
    return target
