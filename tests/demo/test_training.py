"""The training script runs on a CPU: a continuation from the shipped weights, and its batch fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from train import stages
from train.train import main
from worker.models.builtin import DEMO_DIR


def test_continues_from_the_shipped_pipeline(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    main(
        ["--out", str(out), "--work", str(work), "--init-from", str(DEMO_DIR), "--init-step", "100",
         "--images", "8", "--unet-steps", "2", "--batch", "4", "--device", "cpu", "--workers", "1",
         "--sample-steps", "1"]
    )  # fmt: skip
    state = json.loads((out / "state.json").read_text())
    assert state["unet_step"] == 102 and state["ema_updates"] == 102  # counted on from --init-step
    assert state["runs"][-1]["resumed"] is True and state["runs"][-1]["batch"] == 4
    assert sorted(p.name for p in out.glob("ckpt.tar.part*"))[0] == "ckpt.tar.part00"
    assert (out / "samples.png").stat().st_size > 0
    configs = list((work / "ckpt" / "pipeline").glob("*/config.json"))
    assert len(configs) == 3 and not any("_name_or_path" in c.read_text() for c in configs)  # no scratch paths


def test_first_step_out_of_memory_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = stages._diffusion_loss
    batches: list[int] = []

    def loss(*args: Any) -> Any:
        cfg = args[-1]
        batches.append(cfg.batch)
        if cfg.batch > 32:
            raise torch.OutOfMemoryError("simulated")
        return real(*args)

    monkeypatch.setattr(stages, "_diffusion_loss", loss)
    from train.models import make_text_encoder, make_unet

    text_encoder, unet = make_text_encoder(40, 0, 1), make_unet()
    latents, ids = torch.randn(4, 4, 32, 32), torch.randint(0, 40, (4, 77))
    ema = stages.Ema([text_encoder, unet], 0.99)
    cfg = stages.DiffusionConfig(batch=128, log_every=1000)
    alphas = torch.linspace(0.99, 0.01, 1000)
    step, _ = stages.train_diffusion(
        unet, text_encoder, ema, latents, ids, ids[0], alphas, cfg, stages.Budget(1e9, 1),
        lambda _: None, lambda *_: None, 1e9,
    )  # fmt: skip
    assert step == 1 and batches == [128, 64, 32] and cfg.batch == 32
