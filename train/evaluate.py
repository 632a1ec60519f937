"""Prompt adherence of a trained demo model on held-out captions, and a Fréchet distance.

For ``--count`` held-out one-shape scenes (label tuples never seen in training) the model draws
the full caption with a fixed seed per image; then

* the scene reader (train/classifier.py) reads each image back: background colour, shape colour
  and position by exact pixel analysis, shape kind by a silhouette CNN trained on renders, size
  from the shape's extent; on real renders of the same scenes it is right (nearly) every time;
* the Fréchet distance between the reader's features of the generated images and of the real
  renders of the same scenes is reported, with the distance between two real sets as its floor.

Generated images are kept in ``--out`` (``generated_g<guidance>.npz``) and reused by a later run
with the same settings, so the scoring can be changed without drawing again.

    python -m train.evaluate --model worker/assets/demo --count 200 --guidance 5 --out .train/eval
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from train.classifier import frechet_distance, load_or_train, read_scenes
from train.dataset import Scene, caption, held_out_scenes, render_array

TARGETS = {"background": 0.90, "colour": 0.85, "kind": 0.70, "position": 0.70}
ATTRIBUTES = ("background", "colour", "kind", "position", "size")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("worker/assets/demo"))
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[5.0])
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classifier", type=Path, default=Path(".train/silhouettes.safetensors"))
    p.add_argument("--out", type=Path, default=Path(".train/eval"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    return p.parse_args(argv)


def generate(pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int) -> np.ndarray:
    """One 256x256 image per prompt, each from its own CPU generator (batching does not change them)."""
    out = []
    for start in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + batch]]
        with torch.no_grad():
            images = pipe(
                prompts[start : start + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=256,
                width=256,
                generator=gens,
            ).images
        out.extend(np.asarray(im.convert("RGB")) for im in images)
    return np.stack(out)


def score(reader: Any, images: np.ndarray, scenes: list[Scene]) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy per attribute of the main shape, and the reader's (N, 73) features."""
    readings = read_scenes(reader, images)
    acc: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        truth = [s.background if attribute == "background" else getattr(s.shapes[0], attribute) for s in scenes]
        acc[attribute] = float(np.mean([getattr(r, attribute) == t for r, t in zip(readings, truth, strict=True)]))
    return acc, np.stack([r.features for r in readings]).astype(np.float64)


def _grid(images: np.ndarray, path: Path, columns: int = 8) -> None:
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (256 * columns, 256 * rows))
    for i, im in enumerate(images):
        grid.paste(Image.fromarray(im), ((i % columns) * 256, (i // columns) * 256))
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    from diffusers import StableDiffusionPipeline

    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    reader = load_or_train(args.classifier)
    scenes = held_out_scenes(0, args.count)
    real = np.stack([render_array(s) for s in scenes])
    reference_scenes = held_out_scenes(1, args.count)
    reference = np.stack([render_array(s) for s in reference_scenes])
    real_acc, real_feats = score(reader, real, scenes)
    _, reference_feats = score(reader, reference, reference_scenes)
    results: dict[str, Any] = {
        "model": str(args.model),
        "count": args.count,
        "steps": args.steps,
        "real_accuracy": real_acc,
        "fd_real_vs_real": frechet_distance(real_feats, reference_feats),
        "runs": [],
    }
    print(f"reader on real renders of the held-out scenes: {json.dumps(real_acc)}", flush=True)
    print(f"FD real vs real: {results['fd_real_vs_real']:.3f}", flush=True)

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, use_safetensors=True, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = [caption(s) for s in scenes]
    seeds = [args.seed + i for i in range(args.count)]
    for guidance in args.guidance:
        cache = args.out / f"generated_g{guidance:g}_n{args.count}_s{args.steps}_seed{args.seed}.npz"
        seconds = float("nan")
        if cache.exists():
            images = np.load(cache)["images"]
        else:
            started = time.perf_counter()
            images = generate(pipe, prompts, seeds, args.steps, guidance, args.batch)
            seconds = (time.perf_counter() - started) / args.count
            np.savez_compressed(cache, images=images)
        acc, feats = score(reader, images, scenes)
        run = {"guidance": guidance, "seconds_per_image": seconds, "accuracy": acc,
               "fd": frechet_distance(feats, real_feats)}  # fmt: skip
        results["runs"].append(run)
        _grid(images[:32], args.out / f"generated_g{guidance:g}.png")
        print(json.dumps(run), flush=True)
    _grid(real[:32], args.out / "real.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| attribute | target | " + " | ".join(f"g={r['guidance']:g}" for r in results["runs"]) + " |")
    print("|---|---|" + "---|" * len(results["runs"]))
    for key in ATTRIBUTES:
        target = f"≥ {TARGETS[key]:.0%}" if key in TARGETS else ""
        cells = " | ".join(f"{r['accuracy'][key]:.1%}" for r in results["runs"])
        print(f"| {key} | {target} | {cells} |")
    print("| FD (real vs real: {:.2f}) | | ".format(results["fd_real_vs_real"])
          + " | ".join(f"{r['fd']:.2f}" for r in results["runs"]) + " |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
