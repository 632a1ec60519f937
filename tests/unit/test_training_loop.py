"""The shared training loop and loss (worker/trainings/loop.py) and the hyperparameter defaults, on tiny modules."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from worker.trainings.loop import OptimizerConfig, Step, Trainer, diffusion_loss, every, run_loop
from worker.trainings.session import Hyperparameters, defaults, hyperparameters_from


class _Unet(torch.nn.Module):
    """Stands in for a UNet: ``unet(noisy, t, context).sample``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> Any:
        class Out:
            sample = self.conv(noisy) + context.mean() + 0.0 * t.float().mean()

        return Out()


def _problem(seed: int = 0) -> tuple[_Unet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return _Unet(), torch.randn(6, 4, 8, 8), torch.randn(6, 3, 5), torch.linspace(0.999, 0.01, 1000)


def test_min_snr_weighting_and_offset_noise_follow_the_generator() -> None:
    unet, latents, context, alphas = _problem()
    plain, mse = diffusion_loss(unet, latents, context, alphas, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(plain, mse.mean()) and mse.shape == (6,)
    again, _ = diffusion_loss(unet, latents, context, alphas, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, again)  # the same generator, the same timesteps and noise
    weighted, same_mse = diffusion_loss(
        unet, latents, context, alphas, min_snr_gamma=5.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(mse, same_mse) and weighted.item() <= plain.item()  # min(snr, 5)/snr <= 1
    offset, _ = diffusion_loss(
        unet, latents, context, alphas, noise_offset=0.1, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(offset, plain)
    v, _ = diffusion_loss(
        unet, latents, context, alphas, prediction_type="v_prediction", generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(v, plain)
    with pytest.raises(ValueError, match="sample"):
        diffusion_loss(unet, latents, context, alphas, prediction_type="sample")


def _trainer(unet: torch.nn.Module, scheduler: str = "cosine", total: int = 10) -> Trainer:
    cfg = OptimizerConfig(learning_rate=1e-2, lr_scheduler=scheduler, warmup_steps=2, max_grad_norm=1.0)
    return Trainer(unet.parameters(), cfg, total)


def test_the_loop_steps_calls_hooks_and_stops() -> None:
    unet, latents, context, alphas = _problem()
    trainer = _trainer(unet)
    gen = torch.Generator().manual_seed(0)
    seen: list[Step] = []
    marks: list[int] = []
    last = run_loop(
        trainer, lambda: diffusion_loss(unet, latents, context, alphas, generator=gen)[0], total_steps=10,
        hooks=[seen.append, every(3, marks.append)], should_stop=lambda step: step >= 7,
    )  # fmt: skip
    assert last == 7 and [s.step for s in seen] == list(range(1, 8)) and marks == [3, 6]
    assert seen[0].lr == 0.0 and seen[1].lr == pytest.approx(5e-3) and seen[2].lr == pytest.approx(1e-2)  # warm-up
    assert seen[-1].lr < 1e-2  # then the cosine
    assert run_loop(trainer, lambda: latents.sum() * 0, total_steps=7) == 7  # already there: no step


def test_a_step_out_of_memory_is_retried_only_when_asked() -> None:
    unet, latents, context, alphas = _problem()
    trainer = _trainer(unet, "constant")
    calls: list[int] = []

    def loss() -> torch.Tensor:
        calls.append(len(calls))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("simulated")
        return diffusion_loss(unet, latents, context, alphas)[0]

    assert run_loop(trainer, loss, total_steps=2, on_oom=lambda step: step == 0) == 2 and len(calls) == 3
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        run_loop(_trainer(unet), loss, total_steps=2)


def test_a_trainer_resumed_from_its_state_continues_identically() -> None:
    def run(split: int | None) -> list[float]:
        unet, latents, context, alphas = _problem()
        trainer = _trainer(unet)
        gen = torch.Generator().manual_seed(3)
        losses: list[float] = []

        def loss() -> torch.Tensor:
            return diffusion_loss(unet, latents, context, alphas, min_snr_gamma=5.0, generator=gen)[0]

        for _ in range(split or 6):
            losses.append(float(trainer.train_step(loss).loss))
        if split is None:
            return losses
        buffer = io.BytesIO()
        torch.save({"trainer": trainer.state_dict(), "params": unet.state_dict(), "gen": gen.get_state()}, buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        unet2 = _problem(seed=99)[0]
        unet2.load_state_dict(state["params"])
        resumed = _trainer(unet2)
        resumed.load_state_dict(state["trainer"])
        gen.set_state(state["gen"])
        for _ in range(6 - split):
            step = resumed.train_step(
                lambda: diffusion_loss(unet2, latents, context, alphas, min_snr_gamma=5.0, generator=gen)[0]
            )
            losses.append(float(step.loss))
        return losses

    assert run(None) == run(3)


def test_unknown_schedules_and_nothing_to_train_are_refused() -> None:
    unet = _Unet()
    with pytest.raises(ValueError, match="schedule"):
        _trainer(unet, "sawtooth")
    unet.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        _trainer(unet)


def test_defaults_per_method_and_family() -> None:
    lora, ti = defaults("lora", "sd1"), defaults("textual_inversion", "sd1")
    assert 4 <= lora.rank <= 16 and lora.learning_rate == 1e-4 and lora.resolution == 512
    assert ti.learning_rate > lora.learning_rate and ti.steps >= lora.steps
    assert defaults("lora", "sdxl").resolution == 1024
    demo = defaults("lora", "sd1", "demo")
    assert demo.resolution == 256 and not demo.random_flip and demo.steps < lora.steps
    assert defaults("lora", "sd1", "some-other-model") == lora
    with pytest.raises(ValueError, match="defaults"):
        defaults("dreambooth", "sd1")


def test_request_hyperparameters_fill_in_from_the_defaults() -> None:
    hp = hyperparameters_from({"steps": 20, "rank": 4, "min_snr_gamma": None, "unknown": 1}, "lora", "sd1")
    assert isinstance(hp, Hyperparameters)
    assert (hp.steps, hp.rank, hp.alpha, hp.min_snr_gamma) == (20, 4, 4.0, None)
    assert hp.learning_rate == defaults("lora", "sd1").learning_rate
    assert hyperparameters_from({"rank": 4, "alpha": 8.0}).alpha == 8.0
