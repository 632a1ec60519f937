"""The built-in tiny model: a real SD 1.x architecture, generated offline, loaded the normal way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from worker.models.builtin import ensure_builtin, tiny_tokenizer_files


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_uses_safetensors(tmp_path: Path, models_cache: Path) -> None:
    one = ensure_builtin("tiny", models_cache)
    two = ensure_builtin("tiny", tmp_path)
    assert _digest(one) == _digest(two)
    assert not list(one.rglob("*.bin")) and not list(one.rglob("*.pt"))
    index = json.loads((one / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][1].startswith("CLIPTokenizer")
    assert ensure_builtin("tiny", models_cache) == one  # cached: not generated again


def test_tokenizer_is_a_real_clip_bpe() -> None:
    vocab, merges = tiny_tokenizer_files()
    assert "<|startoftext|>" in vocab and "<|endoftext|>" in vocab
    assert "lighthouse</w>" in vocab
    assert all(len(m.split(" ")) == 2 for m in merges)


def test_pipeline_loads_through_from_pretrained_and_downsamples_by_8(pipelines: Any) -> None:
    loaded = pipelines.load("tiny")
    pipe = loaded.pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("a lighthouse at dusk").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    with torch.no_grad():
        latents = pipe.vae.encode(torch.zeros(1, 3, 128, 96)).latent_dist.mean
    assert latents.shape == (1, 4, 16, 12)
    assert pipelines.load("tiny") is loaded  # loaded once, kept warm
