"""Accept a job of any task: check, resolve inputs and defaults, store and enqueue."""

from __future__ import annotations

from app.inputs import check_inputs
from app.state import GatewayState
from sdserve.errors import ModelUnavailable
from sdserve.metrics import JOBS_SUBMITTED
from sdserve.queue import Submitted, new_job_id
from sdserve.resolve import check_request, denoising_steps, job_timeout, resolve_request
from sdserve.tasks import Img2ImgRequest, InpaintRequest, JobRequest, OutpaintRequest
from sdserve.tracing import span
from sdserve.webhooks import check_url


async def create_job(
    request: JobRequest, *, state: GatewayState, owner: str | None = None, request_id: str | None = None
) -> Submitted:
    """Everything between a validated body and a queued job (its record and queue position).

    Cheap checks (names, model capabilities) come first; images are decoded and checked only then;
    nothing is stored for a request that is refused.
    """
    spec = check_request(request, state.registry)
    if request.webhook is not None:
        await check_url(request.webhook.url, state.webhook_policy)
    settings = state.settings
    if settings.unserved_models == "refuse" and spec.name not in await state.queue.served_models(
        settings.served_model_ttl_seconds
    ):
        raise ModelUnavailable(
            f"no worker serves model {spec.name!r}; GET /v1/models shows which models live workers serve",
            retry_after=30,
        )
    job_id = new_job_id()
    inputs: dict[str, str] = {}
    if isinstance(request, Img2ImgRequest | InpaintRequest | OutpaintRequest):
        checked = await check_inputs(request, uploads=state.uploads)
        resolved = resolve_request(request, state.registry, checked.image_size)  # refuse before storing
        stored = await checked.store(job_id=job_id, uploads=state.uploads, owner=owner)
        update: dict[str, object] = {"image": stored.image.id}
        if stored.mask is not None:
            update["mask"] = stored.mask.id
        resolved = resolved.model_copy(update=update)
        inputs = stored.keys()
    else:
        resolved = resolve_request(request, state.registry)
    timeout = job_timeout(
        resolved, per_megapixel_step=settings.timeout_seconds_per_megapixel_step, ceiling=settings.job_timeout_seconds
    )
    with span(
        "sdserve.submit", **{"sdserve.job_id": job_id, "sdserve.model": resolved.model, "sdserve.task": resolved.task}
    ):
        submitted = await state.queue.submit(
            resolved,
            job_id=job_id,
            timeout=timeout,
            total_steps=denoising_steps(resolved),
            inputs=inputs,
            owner=owner,
            request_id=request_id,
        )
    JOBS_SUBMITTED.labels(resolved.model or "", resolved.task).inc()  # counted once it is queued
    return submitted
