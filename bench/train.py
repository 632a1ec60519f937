"""Training speed on one GPU: sdserve's trainer against a plain eager loop, side by side, in one run.

Random weights of the real SD 1.5 and SDXL architectures (``bench/arch.py``; speed does not depend on weight
values), loaded in bfloat16 (a worker with ``SDSERVE_DTYPE=bfloat16``), LoRA rank 16 on the attention projections,
batch 4 at the family's native size:

* **eager loop**: the loop ``gpu-baseline.md`` measured: ``unet.add_adapter`` (peft), latents and text embeddings
  precomputed, bf16 autocast, fused AdamW, the noise-prediction MSE; nothing else.
* **sdserve <compile>**: the worker's own trainer, ``worker.trainings.session.TrainingSession`` on the loaded
  pipeline (its dataset encoded once by the VAE and the text encoder, the loss of ``worker.trainings.loop``,
  min-SNR weighting, gradient clipping, the schedule), stepped as the runner steps it (``step_async``: the loss
  stays on the device), with each ``training_compile`` setting: ``off``, ``regional``, ``full``,
  ``full-cudagraphs``.

For each: seconds a step (timed steps after the warm-up ones), images a second, the fraction of the measured
matrix rate (the FLOPs of one step counted by torch's flop counter on the eager loop), peak memory, and the compile
time (the warm-up steps' time beyond as many steady steps). Then **the default recipe** (``defaults("lora",
family)``: 1,000 steps) from the start of the session (dataset encoding, compile) to the exported adapter, with
the ``auto`` setting: the time from a training being taken by a worker to its adapter being usable, less the
object-store write and the Redis round trips (not available on the GPU machine; milliseconds on the CPU).

    python bench/train.py --family sd15,sdxl --out OUT [--modes eager,off,regional,full,full-cudagraphs]
        [--recipe sd15,sdxl] [--steps 30] [--budget 520]
    python bench/train.py --smoke    # tiny architectures on the CPU, compiled through aot_eager (tested)

Every finished stage is written to OUT/train.json at once, so a run cut short keeps what it measured;
``--table OUT/train.json ...`` prints the table of result files.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.arch import build, matmul_rate, sync  # noqa: E402

MODES = ("eager", "off", "regional", "full", "full-cudagraphs")
SIDE = {"sd15": 512, "sdxl": 1024}
RANK = 16
TARGETS = {"sd15": 0.06, "sdxl": 0.18}
"""Seconds a step at batch 4 (the issue's targets on the H200)."""


def load(folder: Path, family: str, device: str, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def examples(count: int, side: int, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """Smooth random colour fields (what a photo's low frequencies look like) with captions."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
        out.append((image, f"a photo of sks thing number {i}, high quality"))
    return out


def context_shapes(pipe: Any, family: str, batch: int) -> dict[str, torch.Tensor]:
    """Random text conditioning of the right shapes (the eager loop's precomputed embeddings)."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    dim = pipe.unet.config.cross_attention_dim
    out = {"context": torch.randn(batch, 77, dim, device=device, dtype=dtype)}
    if family == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        side = SIDE[family]
        out["text_embeds"] = torch.randn(batch, pooled, device=device, dtype=dtype)
        out["time_ids"] = torch.tensor([[side, side, 0, 0, side, side]] * batch, device=device, dtype=dtype)
    return out


class EagerLoop:
    """The plain loop: peft LoRA, precomputed latents and embeddings, bf16 autocast, fused AdamW."""

    def __init__(self, pipe: Any, family: str, batch: int, side: int) -> None:
        from peft import LoraConfig

        self.unet = pipe.unet
        self.unet.requires_grad_(False)
        self.unet.add_adapter(
            LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                       target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )  # fmt: skip
        params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        device = self.unet.device
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
        self.latents = torch.randn(batch, 4, side // 8, side // 8, device=device)
        self.cond = context_shapes(pipe, family, batch)
        self.family = family
        self.alphas = torch.linspace(0.9999, 0.005, 1000, device=device)
        self.autocast = device.type == "cuda"

    def step(self) -> torch.Tensor:
        n = self.latents.shape[0]
        t = torch.randint(0, 1000, (n,), device=self.latents.device)
        noise = torch.randn_like(self.latents)
        a = self.alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * self.latents + (1 - a).sqrt() * noise
        added = (
            {"added_cond_kwargs": {"text_embeds": self.cond["text_embeds"], "time_ids": self.cond["time_ids"]}}
            if self.family == "sdxl"
            else {}
        )
        with torch.autocast(self.latents.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.unet(noisy, t, self.cond["context"], **added).sample
        loss = (pred.float() - noise).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.detach()


def step_flops(pipe: Any, family: str, batch: int, side: int) -> float:
    """FLOPs of one training step (forward and backward) of the eager loop, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    loop = EagerLoop(pipe, family, batch, side)
    with FlopCounterMode(display=False) as counter:
        loop.step()
    return float(counter.get_total_flops())


def session_for(pipe: Any, family: str, batch: int, side: int, steps: int, mode: str, smoke: bool) -> Any:
    from worker.trainings.session import CompileOptions, TrainingSession, compile_options, defaults

    hp = defaults("lora", "sdxl" if family == "sdxl" else "sd1")
    from dataclasses import replace

    hp = replace(hp, steps=steps, batch_size=batch, resolution=side, rank=RANK, alpha=float(RANK), warmup_steps=0)
    options = compile_options(mode, pipe.unet.device, "sdxl" if family == "sdxl" else "sd1")
    if smoke and options is not None:
        options = CompileOptions(options.scope, None, backend="aot_eager")  # no code generation on the CPU
    return TrainingSession(pipe, "lora", examples(8, side), hp, trigger_word="sks", compile_with=options)


def timed(step: Any, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the warm-up steps, seconds a step after them)."""
    sync()
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return warm, (time.perf_counter() - started) / steps


class Results:
    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "train.json"
        self.data: dict[str, Any] = {"meta": meta, "rows": [], "recipes": []}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def peak_reset() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else 0.0


def run_family(family: str, args: argparse.Namespace, results: Results, folder: Path, deadline: float) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    side = 64 if args.smoke else SIDE[family]
    batch = args.batch
    flops = step_flops(load(folder, family, device, dtype), family, batch, side)
    rate = results.data["meta"]["matmul_tflops"] * 1e12
    eager_s: float | None = None
    for mode in args.modes:
        if time.monotonic() > deadline:
            results.data["meta"].setdefault("skipped", []).append(f"{family} {mode}")
            continue
        torch._dynamo.reset()
        peak_reset()
        pipe = load(folder, family, device, dtype)
        row: dict[str, Any] = {"family": family, "mode": mode, "batch": batch, "side": side}
        try:
            if mode == "eager":
                loop = EagerLoop(pipe, family, batch, side)
                warm, per_step = timed(loop.step, args.warmup, args.steps)
                eager_s = per_step
            else:
                session = session_for(pipe, family, batch, side, args.warmup + args.steps + 1, mode, args.smoke)
                try:
                    warm, per_step = timed(session.step_async, args.warmup, args.steps)
                finally:
                    session.close()
            row.update(
                s_per_step=round(per_step, 4),
                images_per_s=round(batch / per_step, 1),
                matrix_fraction=round(flops / per_step / rate, 3),
                peak_gib=peak_gib(),
                compile_s=round(max(0.0, warm - args.warmup * per_step), 1),
                vs_eager=round(eager_s / per_step, 2) if eager_s else None,
                target_s=TARGETS.get(family),
            )
        except Exception:
            row["error"] = traceback.format_exc()[-2500:]
            traceback.print_exc()
        results.data["rows"].append(row)
        results.save()
        print(json.dumps(row), flush=True)
        del pipe
    if family in args.recipe and time.monotonic() < deadline:
        run_recipe(family, args, results, folder, device, dtype)


def run_recipe(
    family: str, args: argparse.Namespace, results: Results, folder: Path, device: str, dtype: torch.dtype
) -> None:
    """The default recipe from the session's start to the exported adapter, with the ``auto`` setting."""
    from worker.trainings.session import CompileOptions, TrainingSession, compile_options, defaults

    torch._dynamo.reset()
    peak_reset()
    pipe = load(folder, family, device, dtype)
    hp = defaults("lora", "sdxl" if family == "sdxl" else "sd1")
    if args.smoke:
        from dataclasses import replace

        hp = replace(hp, steps=5, resolution=64)
    options = compile_options(args.recipe_mode, pipe.unet.device, "sdxl" if family == "sdxl" else "sd1")
    if args.smoke and options is not None:
        options = CompileOptions(options.scope, None, backend="aot_eager")
    sync()
    started = time.perf_counter()
    session = TrainingSession(pipe, "lora", examples(20, hp.resolution), hp, trigger_word="sks", compile_with=options)
    try:
        setup = time.perf_counter() - started
        first = None
        for _ in range(hp.steps):
            info = session.step_async()
            if first is None:
                sync()
                first = time.perf_counter() - started - setup
        sync()
        steady = (time.perf_counter() - started - setup - (first or 0)) / max(1, hp.steps - 1)
        data, _ = session.export()
        total = time.perf_counter() - started
    finally:
        session.close()
    recipe = {
        "family": family, "mode": args.recipe_mode, "steps": hp.steps, "batch": hp.batch_size,
        "side": hp.resolution, "rank": hp.rank, "setup_s": round(setup, 1), "first_step_s": round(first or 0, 1),
        "total_s": round(total, 1), "adapter_mb": round(len(data) / 2**20, 1), "peak_gib": peak_gib(),
        "final_loss": round(float(info.loss), 4), "steady_s_per_step": round(steady, 4),
    }  # fmt: skip
    results.data["recipes"].append(recipe)
    results.save()
    print(json.dumps(recipe), flush=True)


def table(paths: Sequence[str]) -> str:
    lines = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        meta = data["meta"]
        lines.append(f"{meta.get('device')}, torch {meta.get('torch')}, diffusers {meta.get('diffusers')}, "
                     f"peft {meta.get('peft')}; measured matrix rate {meta.get('matmul_tflops')} TFLOP/s")  # fmt: skip
        lines.append(
            "| model | trainer | batch | s/step | images/s | of matrix rate | peak GiB | compile s | vs eager |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in data["rows"]:
            if "error" in row:
                lines.append(f"| {row['family']} | {row['mode']} | {row['batch']} | failed | | | | | |")
                continue
            name = "eager loop" if row["mode"] == "eager" else f"sdserve, {row['mode']}"
            lines.append(
                f"| {row['family']} | {name} | {row['batch']} | {row['s_per_step']} | {row['images_per_s']} "
                f"| {row['matrix_fraction']:.0%} | {row['peak_gib']} | {row['compile_s']} | {row['vs_eager'] or ''} |"
            )
        for recipe in data["recipes"]:
            lines.append(
                f"\n{recipe['family']} default recipe ({recipe['steps']} steps, batch {recipe['batch']}, "
                f"{recipe['side']}², rank {recipe['rank']}, {recipe['mode']}): {recipe['total_s']} s from the "
                f"session's start to the exported adapter (setup {recipe['setup_s']} s, first step "
                f"{recipe['first_step_s']} s, then {recipe.get('steady_s_per_step')} s a step, "
                f"peak {recipe['peak_gib']} GiB)"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd15", help="sd15, sdxl or both (sd15,sdxl)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    parser.add_argument("--recipe", default="sd15,sdxl", help="families whose default recipe is run end to end")
    parser.add_argument("--recipe-mode", default="auto", help="the training_compile setting of the recipe run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the timed ones (the compile)")
    parser.add_argument("--budget", type=float, default=520.0, help="wall-clock seconds; later stages are skipped")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--smoke", action="store_true", help="tiny architectures on the CPU, to check the script")
    parser.add_argument("--table", nargs="*", help="print the table of these train.json files and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.family = "sd15,sdxl" if args.family == "sd15" else args.family
    args.modes = [m for m in args.modes.split(",") if m]
    args.recipe = [f for f in args.recipe.split(",") if f]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    deadline = time.monotonic() + args.budget
    import diffusers
    import peft

    meta = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "cuda": torch.version.cuda, "smoke": args.smoke,
        "matmul_tflops": round(matmul_rate(args.smoke) / 1e12, 1),
    }  # fmt: skip
    results = Results(args.out, meta)
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        for family in args.family.split(","):
            try:
                folder = build(family, Path(scratch), args.smoke)
                run_family(family, args, results, folder, deadline)
            except Exception:
                failed = True
                results.data["meta"][f"{family}_error"] = traceback.format_exc()[-3000:]
                results.save()
                traceback.print_exc()
    failed = failed or any("error" in row for row in results.data["rows"])
    print(table([str(results.path)]))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
