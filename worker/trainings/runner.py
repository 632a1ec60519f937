"""Trainings on the worker: the recipe a LoRA or textual-inversion training runs, in the engine's frame.

``TrainingRunner.run`` (the engine claims the job first, and finishes it with what this returns):

2. **resolve inputs**: the request as the gateway resolved it (every hyperparameter), the dataset's images and
   captions from the store, and the latest checkpoint of an earlier run of this job, if a worker was lost;
3. **session**: the warm pipeline of the base model, with a LoRA on its UNet (or a new token in its text
   encoder) that this run trains (``worker.trainings.session``, one loop shared with ``train/``);
4. **train**: every step is reported (the loss, the learning rate, a cancel seen within a step); every
   ``checkpoint_every`` steps a checkpoint goes to the store *before* a progress event names it (fenced by the
   run), so a later run resumes from the last one named and loses at most that many steps; every
   ``validation.every`` steps (and at the end) the validation prompts are rendered with the same seeds;
5. **store**: the adapter (``.safetensors``), the training manifest beside it, under this run's own files;
6. **register**: the adapter becomes the caller's, usable by name (it shows once the training succeeded);
   the checkpoints are deleted. The warm pipeline is left exactly as it was, whatever happened.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import time
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Literal

import redis
import torch
from PIL import Image

from sdserve.contract.problems import NotFound, UnusableInput
from sdserve.jobs.tracker import JobTracker
from sdserve.keys import Keys
from sdserve.registry import RegistryHolder
from sdserve.replies import text
from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore, check_key, outputs_prefix
from sdserve.trainings.kind import TRAINING, queue_for
from sdserve.trainings.requests import TrainingRequest
from sdserve.trainings.view import (
    LossPoint,
    StoredAdapter,
    StoredValidation,
    StoredValidationImage,
    TrainingFacts,
    TrainingResult,
    thin,
)
from worker.engine.kind import Claimed, QueueRef
from worker.engine.progress import Reporter
from worker.models.pipelines import PipelineCache
from worker.trainings.adapters import register_adapter
from worker.trainings.session import TrainingSession, compile_options, family_of, hyperparameters_from

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 1.0
"""Progress events with the loss go out at most this often (every step still writes the record)."""
TRAINING_PRIORITY = 1
"""Image jobs (priority 0) of the same worker go first when both wait."""


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("sdserve", "torch", "diffusers", "transformers", "peft", "safetensors"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "unknown"
    return found


def checkpoints_prefix(job_id: str) -> str:
    """Checkpoints of every run of a job: outside each run's own files, so a run that is stopped (and deletes
    its files) leaves the checkpoint a later run resumes from; deleted with the job."""
    return check_key(f"{outputs_prefix(job_id)}/checkpoints")


class TrainingRunner:
    """Runs trainings on this worker's warm pipelines."""

    kind = TRAINING.name

    def __init__(
        self,
        settings: Settings,
        registry: RegistryHolder,
        pipelines: PipelineCache,
        tracker: JobTracker,
        connection: redis.Redis,
        store: ObjectStore,
        *,
        worker_name: str,
        device: str,
    ) -> None:
        self.settings = settings
        self.holder = registry
        self.pipelines = pipelines
        self.tracker = tracker
        self.redis = connection
        self.keys = Keys(settings.key_prefix)
        self.store = store
        self.worker_name = worker_name
        self.device = device
        self.models = [m for m in settings.training_models if m in settings.worker_models]

    def queues(self) -> list[QueueRef]:
        return [QueueRef(queue_for(model), priority=TRAINING_PRIORITY) for model in self.models]

    def collect(self, job_id: str, queue: str) -> list[str]:
        return []  # a training holds the worker alone

    def describe(self) -> dict[str, Any]:
        return {"trains": list(self.models)}

    # 2. resolve inputs ------------------------------------------------------------------------------
    def dataset(self, job: Claimed, request: TrainingRequest) -> tuple[list[tuple[Image.Image, str]], dict[str, Any]]:
        """The dataset's images (RGB) with their captions, and its manifest."""
        manifest = json.loads(job.artifacts.read_input("dataset"))
        examples: list[tuple[Image.Image, str]] = []
        for item in manifest["images"]:
            try:
                data = self.store.get(item["key"])
            except NotFound:
                raise UnusableInput("body.dataset", "an image of the dataset is gone (deleted or expired)") from None
            image = Image.open(io.BytesIO(data))
            image.load()
            examples.append((image.convert("RGB"), request.caption_for(item.get("caption"))))
        return examples, manifest

    def last_checkpoint(self, job_id: str) -> tuple[int, str] | None:
        """The newest checkpoint an earlier run of this job named in a progress event (step, key)."""
        entries: Any = self.redis.xrevrange(self.keys.events(job_id), count=2000)
        for _, fields in entries:
            data = json.loads(text(fields.get(b"data", b"{}")) or "{}")
            point = data.get("checkpoint")
            if isinstance(point, dict) and "key" in point:
                return int(point["step"]), str(point["key"])
        return None

    # the recipe ----------------------------------------------------------------------------------------
    def run(self, jobs: list[Claimed]) -> dict[str, dict[str, Any]]:
        job = jobs[0]
        request = TrainingRequest.model_validate(job.record.request)
        assert request.base_model is not None, "the gateway resolved the request"
        examples, manifest = self.dataset(job, request)
        loaded = self.pipelines.load(request.base_model)
        if loaded.loras is not None:  # train against the bare model, whatever image job ran before
            loaded.loras.reset()
        session = TrainingSession(
            loaded.pipe, request.method, examples, hyperparameters_from(request.hyperparameters),
            trigger_word=request.trigger_word, initializer_token=request.initializer_token,
            compile_with=compile_options(
                self.settings.training_compile, loaded.pipe.unet.device, family_of(loaded.pipe)
            ),
        )  # fmt: skip
        try:
            started = time.perf_counter()
            facts, curve = self.train(job, jobs, session, request)
            train_seconds = time.perf_counter() - started
            job.timings["train_ms"] = train_seconds * 1000
            result = self.store_result(job, session, request, manifest, facts, curve, train_seconds)
            self.store.delete_prefix(checkpoints_prefix(job.id) + "/")
            return {job.id: result.model_dump(mode="json")}
        finally:
            session.close()
            if loaded.loras is not None:  # and leave it bare: no inference LoRA is active after the session
                loaded.loras.reset()

    def train(
        self, job: Claimed, jobs: list[Claimed], session: TrainingSession, request: TrainingRequest
    ) -> tuple[TrainingFacts, list[LossPoint]]:
        """Step 4: resume from the last checkpoint named, then train to the last step, reporting each one."""
        hp = request.hyperparameters
        total = int(hp.steps or 1)
        reporter = Reporter(self.tracker, jobs, total)
        facts = TrainingFacts()
        curve: list[LossPoint] = []
        started = time.perf_counter()
        step = 0
        resumed = self.last_checkpoint(job.id)
        if resumed is not None:
            step, key = resumed
            session.load_state_dict(self.store.get(key))
            facts.resumed_from_step = facts.checkpoint_step = step
            log.info("training %s resumes from the checkpoint of step %d", job.id, step)
            reporter.report(step, [{"step": step, "total": total, "resumed_from_step": step}], self._facts(facts))
        last_event = time.monotonic()
        own_checkpoints: list[str] = []
        validation = request.validation
        pending: list[torch.Tensor] = []  # the losses since the last event, on the device: read once per event
        while step < total:
            info = session.step_async()
            step = info.step
            pending.append(info.loss)
            elapsed = time.perf_counter() - started
            facts.learning_rate = info.lr
            facts.elapsed_seconds = round(elapsed, 2)
            done_here = step - (facts.resumed_from_step or 0)
            facts.steps_per_second = round(done_here / elapsed, 4) if elapsed > 0 else None
            event: dict[str, Any] | None = None
            if time.monotonic() - last_event >= LOG_EVERY_SECONDS or step == total:
                event = self._loss_event(step, total, pending, facts, curve)
                last_event = time.monotonic()
            if hp.checkpoint_every and step % hp.checkpoint_every == 0 and step < total:
                key = check_key(f"{checkpoints_prefix(job.id)}/{job.attempt.number}-{step:06d}.pt")
                self.store.put(key, session.state_dict(), "application/octet-stream")  # stored before it is named
                facts.checkpoint_step = step
                event = {**(event or {"step": step, "total": total}), "checkpoint": {"step": step, "key": key}}
                own_checkpoints.append(key)
            if validation is not None and ((validation.every and step % validation.every == 0) or step == total):
                stored = self._validate(job, session, request, step)
                facts.validations.append(stored)
                event = {**(event or {"step": step, "total": total}), "validation": stored.model_dump()}
            # every step: its number, and a cancel seen; the facts (loss, curve, ...) with each event, at most 1/s
            reporter.report(step, [event] if event else None, self._facts(facts) if event else None)
            if event and "checkpoint" in event:  # named now: the one before it is no longer needed
                for old in own_checkpoints[:-1]:
                    self.store.delete(old)
                del own_checkpoints[:-1]
        return facts, curve

    @staticmethod
    def _loss_event(
        step: int, total: int, pending: list[torch.Tensor], facts: TrainingFacts, curve: list[LossPoint]
    ) -> dict[str, Any]:
        """The losses since the last event (read from the device now, once) as a point of the curve and an event."""
        losses = torch.stack(pending).float().cpu()
        pending.clear()
        facts.loss = float(losses[-1])
        point = LossPoint(step=step, loss=float(losses.mean()), learning_rate=facts.learning_rate)
        curve.append(point)
        facts.curve = thin(curve)
        return {"step": step, "total": total, "loss": round(point.loss, 6), "learning_rate": point.learning_rate}

    def store_result(
        self,
        job: Claimed,
        session: TrainingSession,
        request: TrainingRequest,
        manifest: dict[str, Any],
        facts: TrainingFacts,
        curve: list[LossPoint],
        train_seconds: float,
    ) -> TrainingResult:
        """Steps 5 and 6: the adapter and the training manifest under this run's files, then registered."""
        assert request.base_model is not None
        spec = self.holder.current.model(request.base_model)
        hp = request.hyperparameters
        data, extra = session.export()
        adapter_kind: Literal["lora", "embedding"] = "lora" if request.method == "lora" else "embedding"
        filename = f"{request.name}.safetensors"
        adapter_key = job.artifacts.put(filename, data, "application/octet-stream")
        sha = hashlib.sha256(data).hexdigest()
        stored_adapter = StoredAdapter(
            kind=adapter_kind, name=request.name, key=adapter_key, sha256=sha, bytes=len(data),
            token=request.trigger_word if adapter_kind == "embedding" else None,
            trigger_words=[request.trigger_word] if adapter_kind == "lora" else [],
        )  # fmt: skip
        manifest_doc = {
            "training": job.id, "method": request.method, "name": request.name, "base_model": spec.name,
            "family": spec.family, "trigger_word": request.trigger_word, "initializer_token": request.initializer_token,
            "adapter": {"file": filename, "sha256": sha, "bytes": len(data), **extra},
            "dataset": {
                "sha256": manifest["sha256"], "images": manifest["count"],
                "captions": [request.caption_for(i.get("caption")) for i in manifest["images"]],
            },
            "hyperparameters": hp.model_dump(mode="json"),
            "validation": request.validation.model_dump(mode="json") if request.validation else None,
            "loss_curve": [p.model_dump() for p in curve],
            "validation_images": [v.model_dump() for v in facts.validations],
            "resumed_from_step": facts.resumed_from_step, "train_seconds": round(train_seconds, 2),
            "device": self.device, "worker": self.worker_name, "versions": versions(),
            "finished_at": datetime.now(UTC).isoformat(),
        }  # fmt: skip
        manifest_key = job.artifacts.put(
            "manifest.json", json.dumps(manifest_doc, indent=2).encode(), "application/json"
        )
        register_adapter(
            self.redis, self.keys, owner=job.record.owner, training_id=job.id, adapter=stored_adapter,
            family=spec.family, base_model=spec.name,
        )  # fmt: skip
        return TrainingResult(
            adapter=stored_adapter, manifest_key=manifest_key, curve=thin(curve), validations=facts.validations,
            steps=int(hp.steps or 1), resumed_from_step=facts.resumed_from_step, train_seconds=round(train_seconds, 2),
        )  # fmt: skip

    @staticmethod
    def _facts(facts: TrainingFacts) -> dict[str, Any]:
        return facts.model_dump(mode="json")

    def _validate(
        self, job: Claimed, session: TrainingSession, request: TrainingRequest, step: int
    ) -> StoredValidation:
        validation = request.validation
        assert validation is not None and validation.steps is not None and validation.guidance is not None
        size = int(request.hyperparameters.resolution or 512)
        images = session.render(validation.prompts, validation.seed, validation.steps, validation.guidance, size)
        stored: list[StoredValidationImage] = []
        for i, (prompt, image) in enumerate(zip(validation.prompts, images, strict=True)):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            key = job.artifacts.put(f"validation/{step:06d}-{i}.png", buffer.getvalue(), "image/png")
            stored.append(StoredValidationImage(prompt=prompt, seed=validation.seed + i, key=key))
        return StoredValidation(step=step, images=stored)
