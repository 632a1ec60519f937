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
from app.images.resolve import check_request, denoising_steps, job_timeout, resolve_request
from app.images.routes import create_router
from app.jobs.queue import NewJob
from app.state import GatewayState
from sdserve.images.kind import IMAGE, ImageKind
from sdserve.images.requests import AnyRequest, ImageInputRequest


class ImageGatewayKind:
    """The image kind's gateway side."""

    kind: ImageKind = IMAGE

    def router(self) -> APIRouter:
        return create_router(self)

    def queue_of(self, body: Any, state: GatewayState) -> str:
        """Image jobs wait in their model's queue."""
        request: AnyRequest = body
        return request.model or state.registry.default_model

    async def prepare(self, body: Any, state: GatewayState, caller: Caller, job_id: str) -> NewJob:
        request: AnyRequest = body
        registry = state.registry
        spec = check_request(request, registry)
        inputs: dict[str, str] = {}
        input_ids: list[str] = []
        if isinstance(request, ImageInputRequest):
            checked = await check_inputs(request, uploads=state.uploads, owner=caller.owner)
            resolved = resolve_request(request, spec, registry, checked.image_size)  # refuse before storing
            stored = await checked.store(job_id=job_id, uploads=state.uploads, owner=caller.owner)
            update: dict[str, object] = {"image": stored.image.id}
            if stored.mask is not None:
                update["mask"] = stored.mask.id
            resolved = resolved.model_copy(update=update)
            inputs, input_ids = stored.keys(), stored.ids()
        else:
            resolved = resolve_request(request, spec, registry)
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
