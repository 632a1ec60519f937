"""The two training stages: the VAE, then the text encoder and UNet (epsilon-prediction MSE).

Both stages run against a wall-clock budget: the learning rate warms up linearly over the first
steps, then follows a cosine to 5 % of its peak over the stage's time budget. Losses are logged as
averages over ``log_every`` steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from worker.trainings.loop import OptimizerConfig, Step, Trainer, diffusion_loss, run_loop

Log = Callable[[str], None]


@dataclass
class Budget:
    """A stage's time budget (monotonic clock) and optional step cap."""

    seconds: float
    max_steps: int | None = None
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> float:
        """Fraction of the budget spent (0..1)."""
        return min((time.monotonic() - self.started) / max(self.seconds, 1e-6), 1.0)

    def done(self, step: int) -> bool:
        """Whether the stage should stop before ``step``."""
        return self.progress() >= 1.0 or (self.max_steps is not None and step >= self.max_steps)


def learning_rate(peak: float, step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` to 5 % by the budget's end."""
    cosine = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * min(1.0, (step + 1) / warmup) * cosine


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images → float NCHW in [-1, 1] (channels-last memory)."""
    return batch.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class VaeConfig:
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 200
    kl_weight: float = 1e-5
    log_every: int = 100


def train_vae(vae: Any, images: torch.Tensor, cfg: VaeConfig, budget: Budget, log: Log) -> list[dict[str, float]]:
    """Reconstruction (L1) + a small KL term; ``images`` is uint8 NHWC on the training device."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    device = images.device
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    history: list[dict[str, float]] = []
    sums = torch.zeros(3, device=device)
    step = 0
    while not budget.done(step):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg.lr, step, cfg.warmup, budget.progress())
        idx = torch.randint(0, images.shape[0], (cfg.batch,), device=device)
        x = to_pixels(images[idx])
        with _autocast(device):
            moments = vae.quant_conv(vae.encoder(x))
        posterior = DiagonalGaussianDistribution(moments.float())
        with _autocast(device):
            rec = vae.decode(posterior.sample()).sample
        l1 = (rec.float() - x).abs().mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = l1 + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sums += torch.stack([l1.detach(), F.mse_loss(rec.float().detach(), x), kl.detach()])
        step += 1
        if step % cfg.log_every == 0:
            l1_avg, mse_avg, kl_avg = (sums / cfg.log_every).tolist()
            sums.zero_()
            elapsed = time.monotonic() - budget.started
            history.append({"step": step, "seconds": elapsed, "l1": l1_avg, "mse": mse_avg, "kl": kl_avg})
            log(f"vae step {step} {elapsed:.0f}s l1 {l1_avg:.4f} mse {mse_avg:.5f} kl/elem {kl_avg:.3f}")
    vae.eval()
    return history


@torch.no_grad()
def encode_all(vae: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The posterior means of every image: (N, 4, 32, 32) float32, unscaled."""
    device = images.device
    out = []
    for start in range(0, images.shape[0], batch):
        x = to_pixels(images[start : start + batch])
        with _autocast(device):
            moments = vae.quant_conv(vae.encoder(x))
        out.append(moments[:, : moments.shape[1] // 2].float())
    return torch.cat(out)


@dataclass
class DiffusionConfig:
    batch: int = 256
    lr: float = 3e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    cond_drop: float = 0.1
    noise_offset: float = 0.1
    min_snr_gamma: float = 5.0
    log_every: int = 100


class Ema:
    """Exponential moving averages of a set of modules' parameters (with the usual warm-up)."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.modules = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.sources = modules
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, src in zip(self.modules, self.sources, strict=True):
            torch._foreach_lerp_(list(ema.parameters()), list(src.parameters()), 1.0 - decay)


def _diffusion_loss(
    unet: Any,
    text_encoder: Any,
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    cfg: DiffusionConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's min-SNR-weighted loss and its per-sample plain epsilon MSE (captions dropped for CFG)."""
    device = latents.device
    idx = torch.randint(0, latents.shape[0], (cfg.batch,), device=device)
    drop = torch.rand(cfg.batch, device=device) < cfg.cond_drop
    ids = torch.where(drop[:, None], empty_ids[None, :], token_ids[idx])
    with _autocast(device):
        context = text_encoder(ids).last_hidden_state
    autocast = torch.bfloat16 if device.type == "cuda" else None
    return diffusion_loss(
        unet, latents[idx], context, alphas_cumprod, min_snr_gamma=cfg.min_snr_gamma, noise_offset=cfg.noise_offset,
        autocast_dtype=autocast,
    )  # fmt: skip


def train_diffusion(
    unet: Any,
    text_encoder: Any,
    ema: Ema,
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    cfg: DiffusionConfig,
    budget: Budget,
    log: Log,
    checkpoint: Callable[[int, list[dict[str, float]]], None],
    checkpoint_seconds: float,
    start_step: int = 0,
) -> tuple[int, list[dict[str, float]]]:
    """Noise-prediction MSE with min-SNR weighting, offset noise and caption dropout (for CFG).

    The loop and the loss are the service's (``worker.trainings.loop``); the schedule is this stage's own
    (``learning_rate``: warm-up, then a cosine over the time budget).
    """
    device = latents.device
    unet.train()
    text_encoder.train()
    params = [p for m in (unet, text_encoder) for p in m.parameters()]
    optim = OptimizerConfig(learning_rate=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay, max_grad_norm=1.0)
    trainer = Trainer(params, optim, lr_factor=lambda step: learning_rate(1.0, step, cfg.warmup, budget.progress()))
    history: list[dict[str, float]] = []
    sums = torch.zeros(2, device=device)
    mse_of_step: list[torch.Tensor] = []
    last_save = time.monotonic()

    def loss() -> torch.Tensor:
        value, mse = _diffusion_loss(unet, text_encoder, latents, token_ids, empty_ids, alphas_cumprod, cfg)
        mse_of_step[:] = [mse.detach().mean()]
        return value

    def first_step_oom(step: int) -> bool:
        if step > 0 or cfg.batch <= 32:
            return False
        cfg.batch //= 2  # the first step tells whether the batch fits; halve it until it does
        log(f"out of memory at the first step; batch now {cfg.batch}")
        return True

    def after(info: Step) -> None:
        nonlocal last_save, sums
        ema.update()
        sums += torch.stack([info.loss, mse_of_step[0]])
        step = info.step
        if step % cfg.log_every == 0:
            loss_avg, mse_avg = (sums / cfg.log_every).tolist()
            sums.zero_()
            elapsed = time.monotonic() - budget.started
            history.append({"step": start_step + step, "seconds": elapsed, "loss": loss_avg, "mse": mse_avg})
            log(
                f"unet step {start_step + step} {elapsed:.0f}s loss {loss_avg:.4f} mse {mse_avg:.4f} "
                f"lr {trainer.lr:.2e}"
            )
            if step == cfg.log_every and device.type == "cuda":
                log(f"batch {cfg.batch}, peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
            if time.monotonic() - last_save >= checkpoint_seconds:
                checkpoint(start_step + step, history)
                last_save = time.monotonic()

    step = run_loop(trainer, loss, hooks=[after], should_stop=budget.done, on_oom=first_step_oom)
    unet.eval()
    text_encoder.eval()
    return start_step + step, history


def finetune_decoder(
    vae: Any, images: torch.Tensor, latents: torch.Tensor, cfg: VaeConfig, budget: Budget, log: Log
) -> list[dict[str, float]]:
    """Train only the decoder on the frozen encoder's posterior means (L1 + MSE).

    The latent space stays the same, so a UNet trained on it stays valid (as SD's ft-MSE decoder).
    """
    device = images.device
    decoder_params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for p in decoder_params:
        p.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(decoder_params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    history: list[dict[str, float]] = []
    sums = torch.zeros(2, device=device)
    step = 0
    while not budget.done(step):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg.lr, step, cfg.warmup, budget.progress())
        idx = torch.randint(0, images.shape[0], (cfg.batch,), device=device)
        x = to_pixels(images[idx])
        with _autocast(device):
            rec = vae.decode(latents[idx]).sample
        l1 = (rec.float() - x).abs().mean()
        mse = F.mse_loss(rec.float(), x)
        loss = l1 + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params, 1.0)
        opt.step()
        sums += torch.stack([l1.detach(), mse.detach()])
        step += 1
        if step % cfg.log_every == 0:
            l1_avg, mse_avg = (sums / cfg.log_every).tolist()
            sums.zero_()
            elapsed = time.monotonic() - budget.started
            history.append({"step": step, "seconds": elapsed, "l1": l1_avg, "mse": mse_avg})
            log(f"decoder step {step} {elapsed:.0f}s l1 {l1_avg:.4f} mse {mse_avg:.5f}")
    vae.eval().requires_grad_(False)
    return history
