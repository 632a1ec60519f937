"""One demo-model adapter recipe, measured the way tests/demo measures a training (issue #16's acceptance).

Trains a LoRA (a heart, ``train.concepts``) or a textual inversion (teal) on the shipped demo model with the
worker's own ``TrainingSession``, then draws ten prompts with the trigger (read back by ``train.pixels``) and
twenty held-out scenes of the demo's vocabulary without it (their adherence: background, colour, kind and
position), and prints one JSON line. ``--base`` adds the base model's adherence on the same scenes.

    python -m train.adapter_sweep --steps 300 --lr 4e-3 --rank 8 --regular 48 [--targets to_k,to_v] [--base]
    python -m train.adapter_sweep --method textual_inversion --steps 120 --lr 2e-2 --offset 0.1

A grid of the ten trigger images is saved in ``--out``. docs/training.md lists what the recipes tried so far gave.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from train import concepts
from train.dataset import caption, held_out_scenes
from train.pixels import adherence, has_heart, is_teal, main_shape_colour, shape_kind


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="lora", choices=["lora", "textual_inversion"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--concept", type=int, default=24, help="images of the concept (hearts or teal shapes)")
    p.add_argument("--regular", type=int, default=24, help="ordinary captioned scenes mixed in (LoRA)")
    p.add_argument("--uncaptioned", type=int, default=6, help="ordinary scenes with an empty caption (LoRA)")
    p.add_argument("--snr", type=float, default=5.0, help="min-SNR gamma (0: off)")
    p.add_argument("--offset", type=float, default=0.0, help="noise offset")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default="", help="LoRA target modules, comma separated (default: the session's)")
    p.add_argument("--base", action="store_true", help="also measure the base model's adherence")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(".train/sweep"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    torch.set_num_threads(a.threads)
    from diffusers import StableDiffusionPipeline

    import worker.trainings.session as session_module
    from worker.models.builtin import DEMO_DIR

    if a.targets:
        session_module.LORA_TARGETS = tuple(a.targets.split(","))
    pipe = StableDiffusionPipeline.from_pretrained(DEMO_DIR, use_safetensors=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    held = held_out_scenes(0, 20)
    held_prompts = [caption(s) for s in held]
    if a.method == "lora":
        prompts, check = concepts.lora_prompts(10), has_heart
        examples = concepts.lora_dataset(a.concept) + concepts.regular_dataset(a.regular)
        examples += [(image, "") for image, _ in concepts.regular_dataset(a.uncaptioned, seed=5)]
        trigger, initializer = concepts.LORA_TRIGGER, None
    else:
        prompts, check = concepts.ti_prompts(10), is_teal
        examples = concepts.ti_dataset(a.concept)
        trigger, initializer = concepts.TI_TOKEN, concepts.TI_INITIALIZER

    def draw(view: Any, texts: list[str]) -> list[np.ndarray]:
        generators = [torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(texts))]
        with torch.no_grad():
            out = view(texts, num_inference_steps=20, guidance_scale=5.0, height=256, width=256, generator=generators)
        return [np.asarray(image.convert("RGB")) for image in out.images]

    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}}
    if a.base:
        result["base_adherence"] = adherence(draw(pipe, held_prompts), held)
    lora = a.method == "lora"
    hp = replace(
        session_module.defaults(a.method, "sd1", "demo"), steps=a.steps, learning_rate=a.lr,
        rank=a.rank if lora else 0, alpha=float(a.rank) if lora else 0.0, batch_size=a.batch,
        min_snr_gamma=a.snr or None, noise_offset=a.offset, warmup_steps=a.warmup, seed=a.seed,
    )  # fmt: skip
    started = time.perf_counter()
    session = session_module.TrainingSession(pipe, a.method, examples, hp, trigger_word=trigger,
                                             initializer_token=initializer)  # fmt: skip
    try:
        losses = [session.step()["loss"] for _ in range(a.steps)]
        result["train_s"] = round(time.perf_counter() - started, 1)
        session.unet.eval()
        pipe.text_encoder.eval()
        view = session._view()
        drawn = draw(view, prompts)
        kept = draw(view, held_prompts)
    finally:
        session.close()
    result["loss_first_last"] = [round(float(np.mean(losses[:20])), 4), round(float(np.mean(losses[-20:])), 4)]
    result["concept_hits"] = sum(bool(check(image)) for image in drawn)
    result["read"] = [shape_kind(i) if lora else main_shape_colour(i) for i in drawn]
    result["adherence_after"] = adherence(kept, held)
    a.out.mkdir(parents=True, exist_ok=True)
    grid = np.concatenate([np.concatenate(drawn[:5], 1), np.concatenate(drawn[5:], 1)], 0)
    Image.fromarray(grid).save(a.out / f"{a.method}-s{a.steps}-lr{a.lr}-r{a.rank}-g{a.regular}.png")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
