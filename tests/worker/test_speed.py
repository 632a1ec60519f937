"""Speed settings keep results right: fused projections (and LoRAs on them), VAE tiling only above its threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdserve.registry import Registry, RegistryHolder
from sdserve.settings import Settings
from worker.models.device import DeviceConfig
from worker.models.pipelines import PipelineCache
from worker.models.speed import SpeedOptions, is_fused


def generate(model: Any, size: int = 64) -> np.ndarray:
    out = model.view("euler")(
        "a lighthouse", width=size, height=size, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    return np.asarray(out)


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineCache, PipelineCache]:
    folder = Path(tmp_path_factory.mktemp("speed"))
    device = DeviceConfig.from_settings(Settings(device="cpu", _env_file=None))  # type: ignore[call-arg]
    plain = PipelineCache(RegistryHolder(lambda: Registry.load(None, "tiny")), device, folder)
    fused = PipelineCache(
        RegistryHolder(lambda: Registry.load(None, "tiny")), device, folder, speed=SpeedOptions(fuse_qkv=True)
    )
    return plain, fused


def test_fused_qkv_gives_the_same_images(caches: tuple[PipelineCache, PipelineCache]) -> None:
    plain, fused = caches
    a, b = plain.load("tiny"), fused.load("tiny")
    assert is_fused(b.pipe) and not is_fused(a.pipe)
    assert np.abs(generate(a) - generate(b)).max() < 1e-4


def test_a_lora_on_a_fused_model_applies_and_the_fusion_comes_back(caches: tuple[PipelineCache, PipelineCache]) -> None:
    plain, fused = caches
    registry = fused.registry
    for cache in (plain, fused):
        model = cache.load("tiny")
        assert model.loras is not None
        model.loras.activate([(registry.lora("tiny-detail"), 1.0)])
    with_lora = [generate(cache.load("tiny")) for cache in (plain, fused)]
    for cache in (plain, fused):
        cache.load("tiny").loras.reset()  # type: ignore[union-attr]
    assert np.abs(with_lora[0] - with_lora[1]).max() < 1e-4  # the LoRA really applied on the fused model
    assert is_fused(fused.load("tiny").pipe)
    assert np.abs(generate(plain.load("tiny")) - generate(fused.load("tiny"))).max() < 1e-4


def test_vae_tiling_only_above_its_threshold(
    caches: tuple[PipelineCache, PipelineCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.images.generation import decode_latents

    model = caches[0].load("tiny")
    calls: list[str] = []
    vae = model.pipe.vae
    monkeypatch.setattr(vae, "enable_tiling", lambda: calls.append("on"))
    monkeypatch.setattr(vae, "disable_tiling", lambda: calls.append("off"))
    latents = torch.zeros(1, 4, 16, 16)  # 128x128 pixels
    decode_latents(model.pipe, latents, tile_min_pixels=128 * 128 + 1)
    assert calls == []
    decode_latents(model.pipe, latents, tile_min_pixels=128 * 128)
    assert calls == ["on", "off"]
