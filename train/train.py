"""Train the demo model end to end, against a wall-clock deadline, checkpointing into ``--out``.

Stages: render the procedural corpus (in parallel processes), learn the tokenizer, train the VAE,
encode the corpus to latents, train the CLIP text encoder and the UNet, export the EMA weights as
an fp16 diffusers folder, and draw a grid of samples. ``--resume DIR`` continues from the
``ckpt.tar.part*`` files of an earlier run (the VAE stage is then skipped).

On the device machine (one command runs at most 10 minutes)::

    python -m train.train --out $OUT --work /tmp/work --deadline-at $(( $(date +%s) + 560 ))

On a CPU, a smoke test of every stage::

    python -m train.train --out /tmp/o --work /tmp/w --images 64 --vae-steps 2 --unet-steps 3 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train import checkpoint as ck
from train.corpus import render_corpus, tokenize
from train.models import (
    make_pipeline,
    make_text_encoder,
    make_train_scheduler,
    make_unet,
    make_vae,
    parameter_count,
    save_pipeline,
)
from train.stages import (
    Budget,
    DiffusionConfig,
    Ema,
    VaeConfig,
    encode_all,
    finetune_decoder,
    train_diffusion,
    train_vae,
)
from train.tokenizer import build_tokenizer, load_tokenizer

SAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a small yellow star at the top left on a black background",
    "a large green square in the center on a white background",
    "a purple triangle at the bottom right on a yellow gradient background",
    "a small white ring on the left on a red background",
    "a large orange cross at the top on a cyan background",
    "a pink circle at the bottom left on a green gradient background",
    "a large blue star on the right on an orange background",
    "a black square at the top right on a pink background",
    "a cyan triangle at the bottom on a purple background",
    "a small red ring in the center on a white gradient background",
    "a large yellow circle at the top left and a small blue square at the bottom right on a black background",
    "a green cross on a yellow background",
    "a white star at the bottom right on a blue gradient background",
    "a large red triangle on the left on a cyan background",
    "an orange ring at the top right on a green background",
]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="checkpoints, samples and state go here")
    p.add_argument("--work", type=Path, required=True, help="scratch folder")
    p.add_argument("--resume", type=Path, help="folder holding ckpt.tar.part* of an earlier run")
    p.add_argument(
        "--init-from", type=Path, help="continue from a shipped fp16 pipeline folder (e.g. worker/assets/demo)"
    )
    p.add_argument("--init-step", type=int, default=0, help="UNet steps the --init-from weights already had")
    p.add_argument("--deadline-at", type=float, help="Unix time by which everything must be written")
    p.add_argument("--reserve", type=float, default=35.0, help="seconds kept for the final export")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--images", type=int, default=80_000)
    p.add_argument("--workers", type=int, default=max((os.cpu_count() or 2) - 1, 1))
    p.add_argument("--vae-seconds", type=float, default=100.0)
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--vae-batch", type=int, default=VaeConfig.batch)
    p.add_argument("--vae-lr", type=float, default=VaeConfig.lr)
    p.add_argument("--decoder-seconds", type=float, default=0.0, help="fine-tune the decoder alone first")
    p.add_argument("--decoder-steps", type=int)
    p.add_argument("--unet-seconds", type=float, default=1e9, help="capped by the deadline")
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--batch", type=int, default=DiffusionConfig.batch)
    p.add_argument("--lr", type=float, default=DiffusionConfig.lr)
    p.add_argument("--warmup", type=int, default=DiffusionConfig.warmup)
    p.add_argument("--checkpoint-seconds", type=float, default=60.0)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--sample-guidance", type=float, default=5.0)
    return p.parse_args(argv)


class Trainer:
    """Holds the models through the stages and writes checkpoints."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.ckpt_dir = args.work / "ckpt"
        self.state: dict[str, Any] = {"vae_history": [], "unet_history": [], "runs": []}
        self.resumed: Path | None = None
        self.vae: Any = None
        self.tokenizer: Any = None
        self.text_encoder: Any = None
        self.unet: Any = None
        self.ema: Ema | None = None
        if args.init_from is not None:
            self.resumed = _checkpoint_from_pipeline(args.init_from, args.work / "resume" / "ckpt", args.init_step)
            self.state = ck.read_state(self.resumed)
            _log(f"continuing from the pipeline {args.init_from} (unet step {args.init_step})")
        elif args.resume is not None:
            self.resumed = ck.read_parts(args.resume, args.work / "resume")
            self.state = ck.read_state(self.resumed)
            _log(f"resuming from {args.resume}: unet step {self.state.get('unet_step', 0)}")

    def remaining(self) -> float:
        """Seconds left before the final export must start."""
        if self.args.deadline_at is None:
            return 1e9
        return float(self.args.deadline_at - time.time() - self.args.reserve)

    def corpus(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render the corpus (before CUDA starts: the renderers are forked), tokenize, move to the device."""
        args, dev = self.args, self.device
        t0 = time.monotonic()
        images_np, captions = render_corpus(args.data_seed, args.images, args.workers)
        _log(f"rendered {len(captions)} images in {time.monotonic() - t0:.1f}s with {args.workers} workers")
        if self.resumed is not None:
            self.tokenizer = load_tokenizer(self.resumed / "pipeline" / "tokenizer")
        else:
            self.tokenizer = build_tokenizer(args.work / "tokenizer", seed=args.data_seed)
        token_ids = torch.from_numpy(tokenize(self.tokenizer, captions)).to(dev)
        empty_ids = torch.from_numpy(tokenize(self.tokenizer, [""])[0]).to(dev)
        _log(f"tokenizer: {len(self.tokenizer)} tokens; e.g. {captions[0]!r}")
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
            _log(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
        images = torch.empty((args.images, 256, 256, 3), dtype=torch.uint8, device=dev)
        for start in range(0, args.images, 4096):
            images[start : start + 4096] = torch.from_numpy(images_np[start : start + 4096]).to(dev)
        return images, token_ids, empty_ids

    def vae_stage(self, images: torch.Tensor) -> None:
        """Train the VAE (or load the resumed one)."""
        args = self.args
        if self.resumed is not None:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(self.resumed / "pipeline" / "vae", dtype=torch.float32)
        else:
            self.vae = make_vae()
            _log(f"vae: {parameter_count(self.vae) / 1e6:.2f}M parameters")
        self.vae.to(self.device, memory_format=torch.channels_last)
        if self.resumed is None:
            budget = Budget(min(args.vae_seconds, self.remaining()), args.vae_steps)
            config = VaeConfig(batch=args.vae_batch, lr=args.vae_lr)
            self.state["vae_history"] = train_vae(self.vae, images, config, budget, _log)
            self.state["vae_seconds"] = time.monotonic() - budget.started
        self.vae.eval().requires_grad_(False)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means of the corpus (after an optional decoder-only fine-tune), scaled to unit spread."""
        args = self.args
        t0 = time.monotonic()
        latents = encode_all(self.vae, images)
        if args.decoder_seconds > 0:
            budget = Budget(min(args.decoder_seconds, self.remaining()), args.decoder_steps)
            config = VaeConfig(batch=args.vae_batch, lr=args.vae_lr, warmup=50)
            history = finetune_decoder(self.vae, images, latents, config, budget, _log)
            self.state.setdefault("decoder_history", []).append(history)
        _recon_grid(self.vae, images, args.out / "recon.png")
        if self.resumed is None:  # SD's 0.18215 is the same kind of number
            self.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        scale = float(self.vae.config.scaling_factor)
        latents = latents * scale
        self.state["scaling_factor"] = scale
        self.state["latent_channel_mean"] = latents.mean(dim=(0, 2, 3)).tolist()
        self.state["latent_channel_std"] = latents.std(dim=(0, 2, 3)).tolist()
        means = [round(v, 3) for v in self.state["latent_channel_mean"]]
        _log(f"latents of {latents.shape[0]} images, {time.monotonic() - t0:.1f}s; scale {scale:.4f}; means {means}")
        return latents

    def diffusion_models(self) -> None:
        """The text encoder, UNet and their EMA: new, or from the resumed checkpoint."""
        tok, dev = self.tokenizer, self.device
        self.text_encoder = make_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id).to(dev)
        self.unet = make_unet().to(dev)
        if self.resumed is not None:
            from safetensors.torch import load_file

            pipeline = self.resumed / "pipeline"
            self.text_encoder.load_state_dict(load_file(str(pipeline / "text_encoder" / "model.safetensors")))
            self.unet.load_state_dict(load_file(str(pipeline / "unet" / "diffusion_pytorch_model.safetensors")))
        self.ema = Ema([self.text_encoder, self.unet], DiffusionConfig.ema_decay)
        if self.resumed is not None:
            self.ema.updates = int(self.state.get("ema_updates", 0))
            ck.load_raw(self.text_encoder, self.resumed / "raw" / "text_encoder.safetensors")
            ck.load_raw(self.unet, self.resumed / "raw" / "unet.safetensors")
        self.unet.to(memory_format=torch.channels_last)
        te_m, unet_m = parameter_count(self.text_encoder) / 1e6, parameter_count(self.unet) / 1e6
        _log(f"text encoder {te_m:.2f}M, unet {unet_m:.2f}M parameters")

    def diffusion_stage(self, latents: torch.Tensor, token_ids: torch.Tensor, empty_ids: torch.Tensor) -> None:
        """Train the text encoder and UNet until the deadline, checkpointing every so often."""
        args, dev = self.args, self.device
        assert self.ema is not None
        previous: list[dict[str, float]] = list(self.state.get("unet_history", []))
        start_step = int(self.state.get("unet_step", 0))

        def save(step: int, history: list[dict[str, float]]) -> None:
            self.state["unet_step"] = step
            self.state["unet_history"] = previous + history
            self.export()

        cfg = DiffusionConfig(batch=args.batch, lr=args.lr, warmup=args.warmup)
        budget = Budget(min(args.unet_seconds, self.remaining()), args.unet_steps)
        _log(f"unet stage: {budget.seconds:.0f}s budget, batch {cfg.batch}, lr {cfg.lr}")
        alphas = make_train_scheduler().alphas_cumprod.to(dev, torch.float32)
        step, history = train_diffusion(
            self.unet, self.text_encoder, self.ema, latents, token_ids, empty_ids, alphas,
            cfg, budget, _log, save, args.checkpoint_seconds, start_step=start_step,
        )  # fmt: skip
        device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        self.state["runs"].append(
            {"unet_steps": step - start_step, "unet_seconds": time.monotonic() - budget.started, "batch": cfg.batch,
             "lr": cfg.lr, "device": device_name, "torch": torch.__version__, "resumed": self.resumed is not None}
        )  # fmt: skip
        save(step, history)

    def export(self) -> None:
        """Write the checkpoint (EMA pipeline + raw weights + state) into ``--out``."""
        started = time.monotonic()
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        assert self.ema is not None
        te_ema, unet_ema = self.ema.modules
        save_pipeline(make_pipeline(self.vae, te_ema, self.tokenizer, unet_ema), self.ckpt_dir / "pipeline")
        ck.save_raw(self.text_encoder, self.ckpt_dir / "raw" / "text_encoder.safetensors")
        ck.save_raw(self.unet, self.ckpt_dir / "raw" / "unet.safetensors")
        self.state["ema_updates"] = self.ema.updates
        ck.write_state(self.ckpt_dir, self.state)
        parts = ck.write_parts(self.ckpt_dir, self.args.out)
        (self.args.out / "state.json").write_text(json.dumps(self.state, indent=1))
        size = sum(p.stat().st_size for p in parts) / 2**20
        _log(f"checkpoint: {len(parts)} parts, {size:.1f} MiB, {time.monotonic() - started:.1f}s")


def _checkpoint_from_pipeline(pipeline: Path, folder: Path, step: int) -> Path:
    """A checkpoint folder whose raw weights are a shipped pipeline's (EMA) text encoder and UNet."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pipeline, folder / "pipeline")
    (folder / "raw").mkdir(parents=True)
    shutil.copy(pipeline / "text_encoder" / "model.safetensors", folder / "raw" / "text_encoder.safetensors")
    shutil.copy(pipeline / "unet" / "diffusion_pytorch_model.safetensors", folder / "raw" / "unet.safetensors")
    state = {"vae_history": [], "unet_history": [], "runs": [], "unet_step": step, "ema_updates": step}
    ck.write_state(folder, state)
    return folder


def _recon_grid(vae: Any, images: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from train.stages import to_pixels

    with torch.no_grad():
        x = to_pixels(images[:8])
        rec = vae(x).sample.clamp(-1, 1)
    rows = [((t + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy() for t in (x, rec)]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(path)


def _sample_grid(trainer: Trainer, path: Path) -> None:
    from PIL import Image

    assert trainer.ema is not None
    te_ema, unet_ema = trainer.ema.modules
    pipe = make_pipeline(trainer.vae, te_ema, trainer.tokenizer, unet_ema)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    with torch.no_grad():
        images = pipe(
            SAMPLE_PROMPTS,
            num_inference_steps=trainer.args.sample_steps,
            guidance_scale=trainer.args.sample_guidance,
            height=256,
            width=256,
            generator=generator,
        ).images
    grid = Image.new("RGB", (256 * 4, 256 * ((len(images) + 3) // 4)))
    for i, image in enumerate(images):
        grid.paste(image, ((i % 4) * 256, (i // 4) * 256))
    grid.save(path)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    trainer = Trainer(args)
    # 1. Corpus and tokenizer.  2. VAE.  3. Latents.  4. Text encoder + UNet.  5. Samples.
    images, token_ids, empty_ids = trainer.corpus()
    trainer.vae_stage(images)
    latents = trainer.latents(images)
    del images
    trainer.diffusion_models()
    trainer.diffusion_stage(latents, token_ids, empty_ids)
    t0 = time.monotonic()
    _sample_grid(trainer, args.out / "samples.png")
    _log(f"samples in {time.monotonic() - t0:.1f}s; done")


if __name__ == "__main__":
    main(sys.argv[1:])
