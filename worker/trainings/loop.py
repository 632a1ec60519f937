"""The one training loop (the service's adapter trainings and ``train/``'s demo model) and the diffusion loss.

* ``Trainer``: AdamW (torch's; fused on CUDA) over some parameters, a learning-rate schedule
  (``diffusers.optimization.get_scheduler`` by name, or a custom factor of the step), gradient clipping, an
  optional gradient scaler (float16 on CUDA), and its state for checkpoints.
* ``run_loop``: steps a ``Trainer`` until a step count or a stop condition, calling hooks after every step
  with ``Step(step, loss, lr)`` (report progress, checkpoint every N steps with ``every``, render
  validation, stop at cancel), and optionally retrying a step that ran out of memory.
* ``diffusion_loss``: noise-prediction MSE (epsilon or v-prediction) at uniformly drawn timesteps, with
  min-SNR-gamma weighting (Hang et al. 2023) and offset noise, from an explicit generator or torch's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
"""The learning-rate schedules ``Trainer`` takes by name (diffusers' ``get_scheduler``)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    learning_rate: float
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class Step:
    """What one step did: its number (1 after the first step), its loss (detached, on the device: reading it
    is the caller's choice, as it waits for the device) and the learning rate it used."""

    step: int
    loss: torch.Tensor
    lr: float


StepHook = Callable[[Step], None]
LrFactor = Callable[[int], float]


def _parameters(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    found = [p for p in params if p.requires_grad]
    if not found:
        raise ValueError("nothing to train: no parameter requires a gradient")
    return found


class Trainer:
    """An optimiser, its schedule and its step count: one optimisation step at a time.

    ``lr_factor`` replaces the named schedule with ``peak × lr_factor(step)`` (``train/`` warms up and then
    follows a cosine over a wall-clock budget). ``grad_scaler`` scales a float16 loss on CUDA.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        config: OptimizerConfig,
        total_steps: int | None = None,
        *,
        lr_factor: LrFactor | None = None,
        grad_scaler: bool = False,
    ) -> None:
        from diffusers.optimization import get_scheduler

        self.params = _parameters(params)
        self.config = config
        device = self.params[0].device
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            fused=device.type == "cuda",
        )
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        if lr_factor is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        else:
            if config.lr_scheduler not in LR_SCHEDULERS:
                raise ValueError(f"unknown learning-rate schedule {config.lr_scheduler!r}")
            self.scheduler = get_scheduler(
                config.lr_scheduler,
                self.optimizer,
                num_warmup_steps=config.warmup_steps,
                num_training_steps=total_steps,
            )
        self.scaler = torch.amp.GradScaler(device.type, enabled=grad_scaler and device.type == "cuda")
        self.step = 0

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, loss_fn: Callable[[], torch.Tensor]) -> Step:
        """Compute the loss, back-propagate, clip, step the optimiser and the schedule."""
        lr = self.lr
        loss = loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return Step(self.step, loss.detach(), lr)

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's, the schedule's and the scaler's state and the step count (not the parameters)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def every(n: int | None, fn: Callable[[int], None]) -> StepHook:
    """A hook that calls ``fn(step)`` after every ``n``-th step (never when ``n`` is None or 0)."""

    def hook(info: Step) -> None:
        if n and info.step % n == 0:
            fn(info.step)

    return hook


def run_loop(
    trainer: Trainer,
    step_fn: Callable[[], torch.Tensor],
    *,
    total_steps: int | None = None,
    hooks: Sequence[StepHook] = (),
    should_stop: Callable[[int], bool] | None = None,
    on_oom: Callable[[int], bool] | None = None,
) -> int:
    """Step ``trainer`` on ``step_fn``'s loss from its current step until ``total_steps`` (None: no cap) or
    until ``should_stop(step)``, checked before each step (a cancel, a time budget); returns the last step.

    Each hook is called after each step, in order. A step that runs out of device memory is given to
    ``on_oom(step)``: when it returns True (it made the next try smaller) the step is tried again, else the
    error goes on.
    """
    while (total_steps is None or trainer.step < total_steps) and not (should_stop and should_stop(trainer.step)):
        try:
            info = trainer.train_step(step_fn)
        except torch.OutOfMemoryError:
            trainer.optimizer.zero_grad(set_to_none=True)
            if on_oom is None or not on_oom(trainer.step):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        for hook in hooks:
            hook(info)
    return trainer.step


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def diffusion_loss(
    unet: Any,
    latents: torch.Tensor,
    context: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    min_snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (min-SNR-weighted) mean loss of one batch, and each sample's plain MSE (detach it to log it).

    ``latents`` are scaled clean latents (N, C, H, W) and ``context`` the text encoder's hidden states for each.
    Draws, in this order, a timestep per sample, the noise, and (``noise_offset``) a per-channel offset, from
    ``generator`` (then moved to the latents' device) or torch's own generator of that device.
    """
    device = latents.device
    where = generator.device if generator is not None else device
    n, channels = latents.shape[0], latents.shape[1]
    t = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator, device=where).to(device)
    noise = torch.randn(latents.shape, generator=generator, device=where, dtype=torch.float32).to(device)
    if noise_offset:
        offset = torch.randn((n, channels, 1, 1), generator=generator, device=where, dtype=torch.float32)
        noise = noise + noise_offset * offset.to(device)
    a = alphas_cumprod.to(device, torch.float32)[t].view(-1, 1, 1, 1)
    x0 = latents.float()
    noisy = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = a.sqrt() * noise - (1.0 - a).sqrt() * x0
    else:
        raise ValueError(f"cannot train a {prediction_type!r} model")
    with _autocast(device, autocast_dtype):
        kwargs = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}
        pred = unet(noisy, t, context, **kwargs).sample
    mse = (pred.float() - target).pow(2).mean(dim=tuple(range(1, latents.ndim)))
    if min_snr_gamma is None:
        return mse.mean(), mse
    snr = (a / (1.0 - a)).view(-1)
    weight = snr.clamp(max=min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1.0)
    return (weight * mse).mean(), mse
