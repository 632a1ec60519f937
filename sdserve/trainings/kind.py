"""Training as a kind of work: ``POST /v1/trainings``, followed at ``/v1/trainings/{id}``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from sdserve.contract.lifecycle import JobEvent, JobStatus
from sdserve.jobs.kind import JobKind
from sdserve.jobs.record import JobRecord
from sdserve.jobs.view import ViewContext, common
from sdserve.registry import Registry
from sdserve.trainings.requests import TrainingRequest
from sdserve.trainings.view import (
    Adapter,
    StoredValidation,
    Training,
    TrainingFacts,
    TrainingPayload,
    TrainingProgress,
    TrainingResult,
    ValidationImage,
    ValidationRound,
)

QUEUE_PREFIX = "train-"
"""Trainings of a model wait in ``train-<model>``; a worker serves it when it trains that model."""


def queue_for(model: str) -> str:
    return f"{QUEUE_PREFIX}{model}"


def rounds(validations: list[StoredValidation], ctx: ViewContext) -> list[ValidationRound]:
    """Stored validation images with signed URLs."""
    return [
        ValidationRound(
            step=v.step,
            images=[ValidationImage(prompt=i.prompt, seed=i.seed, url=ctx.url(i.key) or "") for i in v.images],
        )
        for v in validations
    ]


class TrainingKind(JobKind):
    """Trainings: LoRA and textual inversion on a registry model."""

    name: ClassVar[str] = "training"
    collection: ClassVar[str] = "trainings"
    noun: ClassVar[str] = "training"
    title: ClassVar[str] = "Training"
    view_model = Training
    webhook_model = TrainingPayload

    def queues(self, registry: Registry) -> dict[str, str]:
        return {queue_for(name): name for name in registry.models}

    def view(self, record: JobRecord, ctx: ViewContext) -> Training:
        request = TrainingRequest.model_validate(record.request)
        fields = common(self.collection, record, ctx)
        fields.pop("progress")
        facts = TrainingFacts.model_validate(record.progress) if record.progress else TrainingFacts()
        adapter = manifest_url = None
        curve, validations = facts.curve, facts.validations
        if record.status is JobStatus.SUCCEEDED and record.result and not record.purged:
            result = TrainingResult.model_validate(record.result)
            stored = result.adapter
            adapter = Adapter(
                kind=stored.kind, name=stored.name, token=stored.token, trigger_words=stored.trigger_words,
                url=ctx.url(stored.key) or "", sha256=stored.sha256, bytes=stored.bytes,
            )  # fmt: skip
            manifest_url = ctx.url(result.manifest_key)
            curve, validations = result.curve, result.validations
        return Training(
            **fields,
            method=request.method,
            base_model=record.model,
            name=request.name,
            progress=self.progress(record, facts),
            request=request,
            adapter=adapter,
            manifest_url=manifest_url,
            loss_curve=curve,
            validation=[] if record.purged else rounds(validations, ctx),
        )

    @staticmethod
    def progress(record: JobRecord, facts: TrainingFacts) -> TrainingProgress | None:
        if record.status is JobStatus.QUEUED or not record.total:
            return None
        step, total = record.step, record.total
        eta = None
        if record.status is JobStatus.RUNNING and facts.steps_per_second:
            eta = round(max(total - step, 0) / facts.steps_per_second, 1)
        elif record.status.is_terminal:
            eta = 0.0 if record.status is JobStatus.SUCCEEDED else None
        elapsed = facts.elapsed_seconds
        if record.status is JobStatus.RUNNING and record.started_at:
            elapsed = round(max(time.time() - record.started_at, 0.0), 1)
        return TrainingProgress(
            step=step, total=total, fraction=round(min(step / total, 1.0), 4), loss=facts.loss,
            learning_rate=facts.learning_rate, elapsed_seconds=elapsed, eta_seconds=eta,
            resumed_from_step=facts.resumed_from_step,
        )  # fmt: skip

    def event_data(self, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> dict[str, Any]:
        """Progress events name validation images by key: clients get signed URLs."""
        out = dict(data)
        if "validation" in out:
            stored = StoredValidation.model_validate(out["validation"])
            out["validation"] = rounds([stored], ctx)[0].model_dump(mode="json")
        return out

    def webhook(self, record: JobRecord, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> TrainingPayload:
        view = self.view(record, ctx)
        if event is JobEvent.PROGRESS and "step" in data and view.progress is not None:
            view.progress.step = int(data["step"])
            view.progress.fraction = round(min(view.progress.step / max(view.progress.total, 1), 1.0), 4)
            if "loss" in data:
                view.progress.loss = data["loss"]
            view.status = JobStatus.RUNNING
        return TrainingPayload(type=f"{self.noun}.{event.value}", timestamp=datetime.now(UTC), data=view)


TRAINING = TrainingKind()
