"""Image generation (txt2img, img2img, inpaint, outpaint) as a kind of work: how its jobs are shown."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from sdserve.contract.lifecycle import JobEvent, JobStatus
from sdserve.images.requests import parse_request
from sdserve.images.view import ImageJobResult, ImageResult, Job, Timings, WebhookJob, WebhookPayload
from sdserve.jobs.kind import JobKind
from sdserve.jobs.record import JobRecord
from sdserve.jobs.view import Progress, ViewContext, common
from sdserve.registry import Registry


class ImageKind(JobKind):
    """Image jobs: ``POST /v1/txt2img`` (and img2img, inpaint, outpaint), followed at ``/v1/jobs/{id}``."""

    name: ClassVar[str] = "image"
    collection: ClassVar[str] = "jobs"
    noun: ClassVar[str] = "job"
    title: ClassVar[str] = "Job"
    view_model = Job
    webhook_model = WebhookPayload
    operation_ids: ClassVar[Mapping[str, str]] = {
        "list": "listJobs",
        "deliveries": "listWebhookDeliveries",
        "redeliver": "redeliverWebhook",
    }

    def queues(self, registry: Registry) -> dict[str, str]:
        """One queue per model of the registry, named after it."""
        return {name: name for name in registry.models}

    def view(self, record: JobRecord, ctx: ViewContext) -> Job:
        result = ImageJobResult.model_validate(record.result)
        images = []
        for image in result.images:
            signed = ctx.store.signed_url(image.key, expires_in=ctx.url_ttl, base_url=ctx.base_url)
            images.append(
                ImageResult(
                    index=image.index, url=signed.url, expires_at=datetime.fromtimestamp(signed.expires_at, UTC),
                    seed=image.seed, width=image.width, height=image.height, content_type=image.content_type,
                )
            )  # fmt: skip
        return Job(
            **common(self.collection, record, ctx),
            task=parse_request(record.request).task,
            model=record.model,
            request=parse_request(record.request),
            images=images,
            manifest_url=ctx.url(result.manifest_key),
            mask_url=ctx.url(result.mask_key),
            timings=Timings.model_validate({k: round(v, 2) for k, v in record.timings.items()}),
        )

    def webhook(self, record: JobRecord, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> WebhookPayload:
        job = self.view(record, ctx)
        thin = WebhookJob.model_validate(job.model_dump(include=set(WebhookJob.model_fields)))
        if event is JobEvent.PROGRESS and "step" in data:  # the step the event was made at, not the latest
            thin.progress = Progress(step=data["step"], total=data["total"], fraction=data["fraction"])
            thin.status = JobStatus.RUNNING
        return WebhookPayload(type=f"{self.noun}.{event.value}", timestamp=datetime.now(UTC), data=thin)


IMAGE = ImageKind()
