"""Turn a client's request into the exact request a worker will run.

The gateway resolves every default (model, size, steps, guidance, scheduler, seed) before the job
is stored, so the job record states precisely what will run, a retried job reproduces the same
images, and the worker never has to guess.
"""

from __future__ import annotations

import secrets

from sdserve.errors import FieldError, InvalidRequest, UnknownName
from sdserve.limits import MAX_PIXELS, MAX_SEED
from sdserve.registry import Registry
from sdserve.tasks import JobRequest


def resolve_request(request: JobRequest, registry: Registry) -> JobRequest:
    """Fill in every default and check the names against the registry.

    Raises:
        UnknownName: the model, style or a LoRA is not in the registry.
        InvalidRequest: the resolved size breaks the pixel budget.
    """
    spec = registry.model(request.model)
    if request.style is not None:
        registry.style(request.style)
    for lora in request.loras:
        raise UnknownName(
            f"unknown LoRA {lora.name!r}; see GET /v1/loras",
            errors=[FieldError("body.loras", f"unknown LoRA {lora.name!r}")],
        )
    width = request.width or spec.native_size
    height = request.height or spec.native_size
    if width * height > MAX_PIXELS:
        raise InvalidRequest(
            f"width × height must be at most {MAX_PIXELS:,} pixels",
            errors=[FieldError("body.width", "pixel budget exceeded")],
        )
    return request.model_copy(
        update={
            "model": spec.name,
            "width": width,
            "height": height,
            "steps": request.steps or spec.default_steps,
            "guidance_scale": spec.default_guidance
            if request.guidance_scale is None
            else request.guidance_scale,
            "scheduler": request.scheduler or spec.default_scheduler,
            "seed": secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
        }
    )
