"""Train the small VAE that the built-in `tiny` and `tiny-sdxl` models share.

The tiny models keep random UNets and text encoders (they exist to run the real code path fast),
but a random VAE turns every image into noise, so image-to-image work could not be checked with
them: a low-strength img2img must come back close to its input. This script trains a small VAE
(AutoencoderKL, four blocks, 8x downsampling as in SD, 4 latent channels) on procedural images
(flat colours, gradients, waves, shapes, soft noise), deterministically, and writes
`worker/tiny_vae/` (fp16 safetensors, about 2.5 MB), which `worker/builtin.py` builds the tiny
models with. It ran on the H100 the device tool lends (a CPU run of the same script plateaus far
higher); `docs/benchmarks.md` records the run.

    python tools/train_tiny_vae.py [--steps 4000] [--batch 64] [--out worker/tiny_vae]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFilter


def tiny_vae_config() -> dict[str, object]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (32, 64, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "norm_num_groups": 8,
        "sample_size": 256,
        "scaling_factor": 0.18215,
    }


def sample_image(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    ys, xs = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # flat colour
        img = np.ones((size, size, 3)) * rng.uniform(0, 1, 3)
    elif kind == 1:  # linear gradient between two colours
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * math.pi)
        t = np.cos(angle) * xs + np.sin(angle) * ys
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = a + (b - a) * t[..., None]
    elif kind == 2:  # waves
        f = rng.uniform(1, 12, 3)
        p = rng.uniform(0, 2 * math.pi, 3)
        img = np.stack(
            [0.5 + 0.45 * np.sin(2 * math.pi * f[c] * (xs + ys * rng.uniform(-1, 1)) + p[c]) for c in range(3)], -1
        )
    elif kind == 3:  # shapes on a background
        canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = rng.integers(0, size, 2)
            x1, y1 = x0 + rng.integers(4, size // 2), y0 + rng.integers(4, size // 2)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        img = np.asarray(canvas) / 255.0
    else:  # soft noise
        noise = Image.fromarray((rng.uniform(0, 255, (size // 4, size // 4, 3))).astype(np.uint8))
        img = (
            np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))) / 255.0
        )
    return np.clip(img, 0, 1).astype(np.float32)


def batch(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    arr = np.stack([sample_image(rng, size) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=150.0, help="stop early after this long")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "worker" / "tiny_vae")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL(**tiny_vae_config()).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    pool = batch(rng, 4096 if device == "cuda" else 64, args.size).to(device)  # procedural images, made once
    started = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, pool.shape[0], (args.batch,), device=device)
        x = pool[index]
        flip = torch.rand(args.batch, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        kl = posterior.kl().mean() / (args.size * args.size * 3)
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        # Warm up over 200 steps, then a cosine decay over the time budget (the step count is unknown).
        fraction = min(1.0, (time.time() - started) / args.seconds)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * fraction))
        opt.step()
        over = time.time() - started > args.seconds
        if step % 250 == 0 or step == args.steps or over:
            err = (recon - x).abs().mean().item() * 127.5
            print(
                f"step {step:5d}  loss {loss.item():.4f}  mean abs error {err:5.2f}/255  {time.time() - started:6.0f}s",
                flush=True,
            )
        if over:
            print(f"stopping at step {step}: time budget spent", flush=True)
            break
    vae = vae.to("cpu", torch.float16)
    vae.save_pretrained(args.out, safe_serialization=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
