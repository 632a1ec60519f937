"""Image generation on the gateway: its create endpoints, and how a request becomes a job.

``prepare`` is the one resolve step: the checks that need no image first (names, model capabilities), then
the input images (decoded and checked, none stored yet), then every default resolved against the registry
(size, steps, scheduler, guidance, seed, LoRA scales), and only then are inline images stored. A refused
request leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import Caller
from app.images.inputs import check_inputs
from app.images.resolve import (
    Owned,
    check_request,
    denoising_steps,
    job_timeout,
    owned_lora_names,
    owned_token_candidates,
    resolve_request,
    used_owned,
)
from app.images.routes import create_router
from app.jobs.queue import NewJob
from app.state import GatewayState
from sdserve.contract.problems import FieldError, UnknownName
from sdserve.images.kind import IMAGE, ImageKind
from sdserve.images.requests import AnyRequest, ImageInputRequest
from sdserve.registry import Registry


class ImageGatewayKind:
    """The image kind's gateway side."""

    kind: ImageKind = IMAGE

    def router(self) -> APIRouter:
        return create_router(self)

    def queue_of(self, body: Any, state: GatewayState) -> str:
        """Image jobs wait in their model's queue."""
        request: AnyRequest = body
        return request.model or state.registry.default_model

    async def owned(self, request: AnyRequest, registry: Registry, state: GatewayState, caller: Caller) -> Owned:
        """The caller's own adapters the request may use (no Redis call when it names none the registry lacks)."""
        names = owned_lora_names(request, registry)
        tokens = owned_token_candidates(request, registry)
        if not names and not tokens:
            return Owned()
        loras = await state.owned.get_many(caller.owner, names) if names else {}
        embeddings = await state.owned.by_tokens(caller.owner, tokens) if tokens else {}
        return Owned(loras=loras, embeddings=list(embeddings.values()))

    async def prepare(self, body: Any, state: GatewayState, caller: Caller, job_id: str) -> NewJob:
        request: AnyRequest = body
        registry = state.registry
        owned = await self.owned(request, registry, state, caller)
        spec = check_request(request, registry, owned)
        inputs: dict[str, str] = {}
        input_ids: list[str] = []
        if isinstance(request, ImageInputRequest):
            checked = await check_inputs(request, uploads=state.uploads, owner=caller.owner)
            resolved = resolve_request(request, spec, registry, checked.image_size, owned)  # refuse before storing
            stored = await checked.store(job_id=job_id, uploads=state.uploads, owner=caller.owner)
            update: dict[str, object] = {"image": stored.image.id}
            if stored.mask is not None:
                update["mask"] = stored.mask.id
            resolved = resolved.model_copy(update=update)
            inputs, input_ids = stored.keys(), stored.ids()
        else:
            resolved = resolve_request(request, spec, registry, owned=owned)
        used = used_owned(resolved, spec, owned)
        gone = await state.owned.note_use(caller.owner, job_id, used)  # so none is deleted while the job needs it
        if gone:  # deleted since it was looked up (a moment ago): as if it had not been there
            index = next((i for i, ref in enumerate(resolved.loras) if ref.name in gone), None)
            if index is not None:
                name = resolved.loras[index].name
                raise UnknownName(
                    f"unknown LoRA {name!r}; see GET /v1/loras",
                    errors=[FieldError(f"body.loras.{index}.name", f"unknown LoRA {name!r}")],
                )
            raise UnknownName(
                f"your embedding {gone[0]!r} was deleted just now; send the request again",
                errors=[FieldError("body.prompt", "an embedding it uses was deleted")],
            )
        settings = state.settings
        return NewJob(
            job_id=job_id,
            kind=IMAGE.name,
            task=resolved.task,
            model=spec.name,
            queue=spec.name,
            request=resolved.model_dump(mode="json"),
            total=denoising_steps(resolved),
            timeout=job_timeout(
                resolved,
                per_megapixel_step=settings.timeout_seconds_per_megapixel_step,
                ceiling=settings.job_timeout_seconds,
            ),
            inputs=inputs,
            input_ids=input_ids,
            metadata=resolved.metadata,
            webhook=resolved.webhook,
            description=f"{resolved.task} {spec.name} {job_id}",
        )


IMAGES = ImageGatewayKind()
