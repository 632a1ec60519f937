"""Schedulers by name: a fresh instance per job, built from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from sdserve.contract.limits import SCHEDULER_NAMES

SCHEDULERS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}


def check_names() -> None:
    """Refuse to run when the worker and the contract disagree on the scheduler names (at worker start)."""
    if set(SCHEDULERS) != set(SCHEDULER_NAMES):
        raise RuntimeError(f"worker and contract disagree on scheduler names: {set(SCHEDULERS) ^ set(SCHEDULER_NAMES)}")


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler of the named kind, configured from the model's scheduler config."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)
