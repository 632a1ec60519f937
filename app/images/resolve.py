"""Turn a client's request into the exact request a worker will run.

The gateway resolves every default (model, size, steps, guidance, scheduler, seed) before the job
is stored, so the job record states precisely what will run, a retried job reproduces the same
images, and the worker never has to guess. Everything that can be refused is refused here, as a
422 naming the field, before any image is decoded or any job exists.
"""

from __future__ import annotations

import secrets

from sdserve.contract.limits import MAX_PIXELS, MAX_SEED, MAX_SIDE, MIN_SIDE
from sdserve.contract.problems import FieldError, InvalidRequest, UnknownName
from sdserve.images.requests import (
    AnyRequest,
    ImageInputRequest,
    Img2ImgRequest,
    OutpaintRequest,
    Txt2ImgRequest,
)
from sdserve.registry import ModelSpec, Registry

DECODE_STEP_EQUIVALENT = 10
"""What the VAE decode of one image costs, in denoising steps of the same size (for timeouts)."""


def check_request(request: AnyRequest, registry: Registry) -> ModelSpec:
    """The checks that need no image: names, and whether the model can run this task as asked."""
    try:
        spec = registry.model(request.model)
    except UnknownName as exc:
        raise UnknownName(exc.detail, errors=[FieldError("body.model", "unknown model")]) from None
    if spec.inpainting and request.task not in ("inpaint", "outpaint"):
        raise InvalidRequest(
            f"model {spec.name!r} is a dedicated inpainting checkpoint: use it for inpaint or outpaint",
            errors=[FieldError("body.model", "inpainting-only model")],
        )
    if request.scheduler is not None and request.scheduler not in spec.schedulers:
        offered = ", ".join(registry.schedulers_for(spec))
        raise InvalidRequest(
            f"model {spec.name!r} does not offer scheduler {request.scheduler!r} (it offers: {offered})",
            errors=[FieldError("body.scheduler", "not offered for this model; see GET /v1/schedulers?model=")],
        )
    if request.style is not None:
        registry.style(request.style)
    for i, ref in enumerate(request.loras):
        field = f"body.loras.{i}.name"
        try:
            lora = registry.lora(ref.name)
        except UnknownName as exc:
            raise UnknownName(exc.detail, errors=[FieldError(field, f"unknown LoRA {ref.name!r}")]) from None
        if not lora.fits(spec):
            fits = ", ".join(lora.base_models) or f"{lora.family} models"
            raise InvalidRequest(
                f"LoRA {ref.name!r} fits {fits}, not model {spec.name!r} ({spec.family})",
                errors=[FieldError(field, "this LoRA does not fit this model")],
            )
    return spec


def nearest_multiple_of_8(value: int) -> int:
    """Round to the nearest multiple of 8 (halves up), at least 64."""
    return max(MIN_SIDE, (value + 4) // 8 * 8)


def output_size(request: AnyRequest, spec: ModelSpec, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """The size of the images a request will produce."""
    if isinstance(request, Txt2ImgRequest):
        return request.width or spec.native_size, request.height or spec.native_size
    assert image_size is not None, "image tasks resolve after their image is decoded"
    width, height = image_size
    if isinstance(request, Img2ImgRequest):
        return request.width or nearest_multiple_of_8(width), request.height or nearest_multiple_of_8(height)
    if isinstance(request, OutpaintRequest):
        size = (width + request.left + request.right, height + request.top + request.bottom)
    else:
        size = (width, height)
    for name, given, actual in (("width", request.width, size[0]), ("height", request.height, size[1])):
        if given is not None and given != actual:
            raise InvalidRequest(
                f"{name} is set by the image for {request.task}: {actual}, not {given}",
                errors=[FieldError(f"body.{name}", f"must be {actual} (or left out)")],
            )
    return size


def denoising_steps(request: AnyRequest) -> int:
    """How many denoising steps will actually run (image tasks run ``steps × strength`` of them)."""
    assert request.steps is not None
    if isinstance(request, Txt2ImgRequest):
        return request.steps
    return min(int(request.steps * request.strength), request.steps)


def resolve_request(
    request: AnyRequest, spec: ModelSpec, registry: Registry, image_size: tuple[int, int] | None = None
) -> AnyRequest:
    """Fill in every default and check what only the resolved request can show (``check_request`` first).

    Raises:
        InvalidRequest: the size breaks the limits, or steps × strength leaves nothing to do.
    """
    width, height = output_size(request, spec, image_size)
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        fields = (
            ["body.width", "body.height"]
            if not isinstance(request, OutpaintRequest)
            else ["body.left", "body.right", "body.top", "body.bottom"]
        )
        raise InvalidRequest(
            f"the output would be {width}x{height}: at most {MAX_PIXELS:,} pixels and {MAX_SIDE} per side",
            errors=[FieldError(f, "output size over the limit") for f in fields],
        )
    resolved = request.model_copy(
        update={
            "model": spec.name,
            "width": width,
            "height": height,
            "steps": request.steps or spec.default_steps,
            "guidance_scale": spec.default_guidance if request.guidance_scale is None else request.guidance_scale,
            "scheduler": request.scheduler or spec.default_scheduler,
            "seed": secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
            "loras": [
                ref.model_copy(
                    update={"scale": registry.lora(ref.name).default_scale if ref.scale is None else ref.scale}
                )
                for ref in request.loras
            ],
        }
    )
    if isinstance(resolved, ImageInputRequest) and denoising_steps(resolved) < 1:
        raise InvalidRequest(
            f"steps × strength must be at least 1 ({resolved.steps} × {resolved.strength} leaves no step to run)",
            errors=[FieldError("body.strength", "too small for the number of steps")],
        )
    return resolved


def job_timeout(request: AnyRequest, *, per_megapixel_step: float, ceiling: int) -> int:
    """A job's own timeout: 60 s plus its work, capped by the ceiling.

    The work is (denoising steps + what its VAE decode costs) × images × megapixels: a large image's decode
    takes as long as several steps, and a timeout that left it out would fail jobs that were fine.
    """
    assert request.width and request.height
    megapixels = request.width * request.height / 1e6
    work = (denoising_steps(request) + DECODE_STEP_EQUIVALENT) * request.num_images * megapixels
    return int(min(ceiling, 60 + per_megapixel_step * work))
