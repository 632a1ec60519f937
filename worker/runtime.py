"""One worker process's warm state, and how it runs a job from record to results."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from pydantic import BaseModel

from sdserve.errors import JobCanceled, SdserveError, problem_type
from sdserve.jobs import JobError
from sdserve.records import JobRecord
from sdserve.registry import Registry
from sdserve.settings import Settings
from sdserve.store import ObjectStore
from sdserve.tasks import REQUEST_MODELS
from sdserve.tracker import JobTracker
from worker.device import DeviceConfig
from worker.outputs import library_versions, write_manifest, write_mask, write_outputs
from worker.pipelines import PipelineCache
from worker.progress import StepReporter
from worker.tasks import img2img, inpaint, outpaint, txt2img
from worker.tasks.base import TaskContext, TaskOutput

log = logging.getLogger(__name__)

Recipe = Callable[[TaskContext, Any], TaskOutput]
TASKS: dict[str, tuple[type[BaseModel], Recipe]] = {
    "txt2img": (REQUEST_MODELS["txt2img"], txt2img.run),
    "img2img": (REQUEST_MODELS["img2img"], img2img.run),
    "inpaint": (REQUEST_MODELS["inpaint"], inpaint.run),
    "outpaint": (REQUEST_MODELS["outpaint"], outpaint.run),
}


def default_worker_name() -> str:
    """``<host>.<pid>``: unique per process, readable in logs."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


@dataclass
class Runtime:
    """The warm pipelines and the services a worker needs to run jobs."""

    settings: Settings
    registry: Registry
    pipelines: PipelineCache
    store: ObjectStore
    tracker: JobTracker
    device: DeviceConfig
    name: str

    def execute(self, job_id: str) -> dict[str, Any]:
        """Run one job end to end. Never raises for the job's own failures: they go on the record."""
        # 1. Claim the job: queued (or a retried running) → running. Ended or canceled: skip it.
        record = self.tracker.load(job_id)
        if record is None:
            log.warning("job %s has no record (expired?); skipping", job_id)
            return {"status": "missing"}
        state = self.tracker.start(job_id, self.name, {"attempt": record.attempts + 1})
        if state == "cancel":
            self.tracker.cancel(job_id)
            return {"status": "canceled"}
        if state != "ok":
            log.info("job %s is %s; skipping", job_id, state)
            return {"status": state}
        started = time.time()
        timings: dict[str, float] = {"queued_ms": (started - record.created_at) * 1000}
        try:
            self._run(record, started, timings)
        except JobCanceled:
            self.store.delete_prefix(f"outputs/{job_id}")
            self.tracker.cancel(job_id, timings)
            log.info("job %s canceled", job_id)
            return {"status": "canceled"}
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            self._fail(job_id, "out-of-memory", "Out of accelerator memory", str(exc).split("\n")[0], timings)
            return {"status": "failed"}
        except SdserveError as exc:
            self._fail(job_id, exc.slug, exc.title, exc.detail, timings)
            return {"status": "failed"}
        except Exception:
            log.exception("job %s failed", job_id)
            self._fail(
                job_id,
                "internal",
                "Internal error",
                f"the worker failed unexpectedly (see worker {self.name}'s log)",
                timings,
            )
            return {"status": "failed"}
        return {"status": "succeeded"}

    def _fail(self, job_id: str, slug: str, title: str, detail: str, timings: dict[str, float]) -> None:
        self.tracker.fail(job_id, JobError(type=problem_type(slug), title=title, detail=detail), timings)

    def _run(self, record: JobRecord, started: float, timings: dict[str, float]) -> None:
        # 2. Parse the stored (resolved) request and fetch the warm model.
        request_model, recipe = TASKS[record.task]
        request: Any = request_model.model_validate(record.request)
        load_started = time.perf_counter()
        model = self.pipelines.load(request.model)
        timings["model_load_ms"] = (time.perf_counter() - load_started) * 1000

        # 3. Activate the job's LoRA set on the warm weights (reset in `finally`, whatever happens).
        assert model.adapters is not None
        try:
            wanted = [(self.registry.lora(ref.name), ref.scale) for ref in request.loras]
            activation = model.adapters.activate(
                [(spec, spec.default_scale if scale is None else scale) for spec, scale in wanted]
            )
            timings["adapters_ms"] = activation.load_ms + activation.activate_ms
            self._run_recipe(record, request, model, recipe, started, timings, activation.adapters)
        finally:
            model.adapters.reset()

    def _run_recipe(
        self,
        record: JobRecord,
        request: Any,
        model: Any,
        recipe: Recipe,
        started: float,
        timings: dict[str, float],
        adapters: list[dict[str, object]],
    ) -> None:
        reporter = StepReporter(
            self.tracker,
            record.id,
            record.total or request.steps,
            preview_every=self.settings.preview_every_steps,
            family=model.spec.family,
        )
        inputs = record.inputs
        ctx = TaskContext(
            job_id=record.id,
            model=model,
            registry=self.registry,
            reporter=reporter,
            read_input=lambda name: self.store.get(inputs[name]),
            timings=timings,
        )

        # 4. Run the task's recipe.
        output = recipe(ctx, request)

        # 5. Write the images and the manifest (deterministic keys: a rerun overwrites, never duplicates).
        upload_started = time.perf_counter()
        prompts = (
            str(output.details.get("prompt", request.prompt)),
            str(output.details.get("negative_prompt", "")),
        )
        stored, digests = write_outputs(self.store, record.id, request, output.images, prompts)
        mask_key = write_mask(self.store, record.id, output.mask) if output.mask is not None else None
        finished = time.time()
        timings["run_ms"] = (finished - started) * 1000
        timings["total_ms"] = (finished - record.created_at) * 1000
        manifest = {
            "job_id": record.id,
            "task": record.task,
            "model": {"name": model.spec.name, "family": model.spec.family, "source": model.spec.source},
            "request": request.model_dump(mode="json", exclude={"webhook"}),
            "effective": output.details,
            "images": [{**img.to_json(), "sha256": digest} for img, digest in zip(stored, digests, strict=True)],
            "inputs": inputs,
            "mask": mask_key,
            "adapters": adapters,
            "worker": {"name": self.name, "device": self.device.describe()},
            "versions": library_versions(),
            "created_at": _iso(record.created_at),
            "started_at": _iso(started),
            "finished_at": _iso(finished),
        }
        manifest_key = write_manifest(self.store, record.id, {**manifest, "timings": timings})
        timings["upload_ms"] = (time.perf_counter() - upload_started) * 1000

        # 6. Mark it succeeded; a cancel that arrived after the last step still wins (and nothing stays stored).
        state = self.tracker.succeed(
            record.id,
            images=stored,
            manifest_key=manifest_key,
            timings=timings,
            total=reporter.total,
            mask_key=mask_key,
        )
        if state == "cancel":
            raise JobCanceled(f"job {record.id} was canceled after its last step")
        if state != "ok":
            log.info("job %s ended (%s) elsewhere before it could succeed", record.id, state)
