"""Turn a client's request into the exact request a worker will run.

The gateway resolves every default (model, size, steps, guidance, scheduler, seed) before the job
is stored, so the job record states precisely what will run, a retried job reproduces the same
images, and the worker never has to guess. Everything that can be refused is refused here, as a
422 naming the field, before any image is decoded or any job exists.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sdserve.contract.limits import MAX_OWNED_EMBEDDINGS, MAX_PIXELS, MAX_SEED, MAX_SIDE, MIN_SIDE
from sdserve.contract.problems import FieldError, InvalidRequest, UnknownName
from sdserve.images.params import OwnedAdapterRef
from sdserve.images.requests import (
    AnyRequest,
    ImageInputRequest,
    Img2ImgRequest,
    OutpaintRequest,
    Txt2ImgRequest,
)
from sdserve.registry import LoraSpec, ModelSpec, Registry
from sdserve.registry.owned import OwnedAdapter

DECODE_STEP_EQUIVALENT = 10
"""What the VAE decode of one image costs, in denoising steps of the same size (for timeouts)."""

TOKEN_IN_TEXT = re.compile(r"<[a-z0-9][a-z0-9._-]{0,62}>")
"""What an embedding's token looks like inside a prompt."""


@dataclass(frozen=True)
class Owned:
    """The caller's own adapters a request uses: LoRAs it names that the registry lacks, embeddings whose tokens
    its prompts hold (looked up in ``sdserve.registry.owned`` before the checks)."""

    loras: Mapping[str, OwnedAdapter] = field(default_factory=dict)
    embeddings: Sequence[OwnedAdapter] = ()


NOTHING_OWNED = Owned()


def owned_lora_names(request: AnyRequest, registry: Registry) -> list[str]:
    """The LoRA names a request gives that the registry lacks: the caller's own, or unknown."""
    return [ref.name for ref in request.loras if ref.name not in registry.loras]


def owned_token_candidates(request: AnyRequest, registry: Registry) -> list[str]:
    """Token-shaped words of the prompts that are no registry embedding's: maybe the caller's own."""
    known = {e.token for e in registry.embeddings.values()}
    found = TOKEN_IN_TEXT.findall(request.prompt) + TOKEN_IN_TEXT.findall(request.negative_prompt)
    return sorted(set(found) - known)


def _lora(name: str, registry: Registry, owned: Owned, field_name: str) -> LoraSpec | OwnedAdapter:
    """A LoRA by name: the registry's, else the caller's own; unknown alike for everyone else."""
    try:
        return registry.lora(name)
    except UnknownName as exc:
        mine = owned.loras.get(name)
        if mine is not None and mine.kind == "lora":
            return mine
        raise UnknownName(exc.detail, errors=[FieldError(field_name, f"unknown LoRA {name!r}")]) from None


def check_request(request: AnyRequest, registry: Registry, owned: Owned = NOTHING_OWNED) -> ModelSpec:
    """The checks that need no image: names (``owned``: the caller's own adapters), and whether the model can run
    this task as asked."""
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
        field_name = f"body.loras.{i}.name"
        lora = _lora(ref.name, registry, owned, field_name)
        if not lora.fits(spec):
            fits = ", ".join(lora.base_models) or f"{lora.family} models"
            raise InvalidRequest(
                f"LoRA {ref.name!r} fits {fits}, not model {spec.name!r} ({spec.family})",
                errors=[FieldError(field_name, "this LoRA does not fit this model")],
            )
    if len(used_embeddings(spec, owned)) > MAX_OWNED_EMBEDDINGS:
        raise InvalidRequest(
            f"the prompts use more than {MAX_OWNED_EMBEDDINGS} of your own embeddings",
            errors=[FieldError("body.prompt", "too many of your own embeddings")],
        )
    return spec


def used_embeddings(spec: ModelSpec, owned: Owned) -> list[OwnedAdapter]:
    """The caller's embeddings a job on this model loads: those whose tokens its prompts hold, that fit it (the
    tokens of others stay plain words, as a registry embedding's do on a model it does not fit)."""
    return sorted((e for e in owned.embeddings if e.kind == "embedding" and e.fits(spec)), key=lambda e: e.name)


def used_owned(request: AnyRequest, spec: ModelSpec, owned: Owned) -> list[OwnedAdapter]:
    """Every owned adapter a resolved job uses: its own LoRAs (in the request's order), then its embeddings."""
    mine = {name: a for name, a in owned.loras.items() if a.kind == "lora"}
    loras = [mine[ref.name] for ref in request.loras if ref.name in mine]
    return loras + used_embeddings(spec, owned)


def owned_ref(adapter: OwnedAdapter) -> OwnedAdapterRef:
    """How a job's request names one of its owner's adapters: by its file and digest, not only its name."""
    return OwnedAdapterRef(
        kind=adapter.kind, name=adapter.name, token=adapter.token, file=adapter.file, sha256=adapter.sha256
    )


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
    request: AnyRequest,
    spec: ModelSpec,
    registry: Registry,
    image_size: tuple[int, int] | None = None,
    owned: Owned = NOTHING_OWNED,
) -> AnyRequest:
    """Fill in every default and check what only the resolved request can show (``check_request`` first).

    The caller's own adapters the job uses go into ``owned_adapters`` with their files and digests (whatever
    the client sent there is replaced): the worker loads exactly those.

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
                    update={
                        "scale": _lora(ref.name, registry, owned, f"body.loras.{i}.name").default_scale
                        if ref.scale is None
                        else ref.scale
                    }
                )
                for i, ref in enumerate(request.loras)
            ],
            "owned_adapters": [owned_ref(a) for a in used_owned(request, spec, owned)],
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
