"""A compiled training step is the eager one: the same losses for the same seed, whichever compile scope, and the
session hands the pipeline back uncompiled. On the CPU the compile goes through ``aot_eager`` (dynamo and
AOTAutograd trace the step, forward and backward, with no code generated): what fails to compile fails here, and
``bench/train.py`` on a GPU only measures."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from worker.trainings.session import CompileOptions, TrainingSession, compile_options, defaults

ROOT = Path(__file__).resolve().parents[2]


def examples() -> list[tuple[Image.Image, str]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(3):
        image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((Image.open(buffer).convert("RGB"), f"a zwx thing {i}"))
    return out


def losses(pipe: Any, options: CompileOptions | None, steps: int = 3) -> list[float]:
    hp = replace(defaults("lora", "sd1"), steps=steps, batch_size=2, resolution=64, rank=4, alpha=4.0)
    torch._dynamo.reset()
    session = TrainingSession(pipe, "lora", examples(), hp, trigger_word="zwx", compile_with=options)
    try:
        return [float(session.step_async().loss) for _ in range(steps)]
    finally:
        session.close()


@pytest.mark.parametrize("scope", ["regional", "full"])
def test_a_compiled_step_gives_the_eager_losses_and_leaves_the_pipeline_uncompiled(pipelines: Any, scope: str) -> None:
    pipe = pipelines.load("tiny").pipe
    eager = losses(pipe, None)
    compiled = losses(pipe, CompileOptions(scope, backend="aot_eager"))  # type: ignore[arg-type]
    assert np.allclose(compiled, eager, rtol=1e-4, atol=1e-6), (compiled, eager)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in pipe.unet.modules())
    assert losses(pipe, None) == eager  # and the next session trains as the first did


def test_the_compile_setting_per_device_and_family() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compile_options("auto", cpu, "sd1") is None
    assert compile_options("auto", cuda, "sd1") == CompileOptions("full", mode="reduce-overhead")
    assert compile_options("auto", cuda, "sdxl") is None  # its whole-step compile outlasts what it saves
    assert compile_options("regional", cpu, "sdxl") == CompileOptions("regional")
    with pytest.raises(ValueError, match="unknown"):
        compile_options("fast", cuda, "sd1")


def test_bench_train_smoke_runs_every_trainer_on_the_cpu(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "train.py"), "--smoke", "--out", str(tmp_path),
               "--modes", "eager,full-cudagraphs", "--recipe", "sd15"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| sd15 | sdserve, full-cudagraphs | 4 |" in done.stdout and "| sdxl | eager loop | 4 |" in done.stdout
    assert "sd15 default recipe (5 steps" in done.stdout
