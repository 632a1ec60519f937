"""One worker process's warm state, and how it runs a job from record to results."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from pydantic import BaseModel
from rq.timeouts import JobTimeoutException

from sdserve.errors import JobCanceled, SdserveError, problem_type
from sdserve.jobs import JobError
from sdserve.logs import bind
from sdserve.metrics import (
    BATCH_SIZE,
    BUSY_SECONDS,
    GPU_MEMORY,
    GPU_MEMORY_PEAK,
    IMAGES,
    JOB_FAILURES,
    JOB_PHASE,
    JOBS_FINISHED,
    RESIDENT_MODELS,
)
from sdserve.records import JobRecord
from sdserve.registry import Registry
from sdserve.settings import Settings
from sdserve.store import ObjectStore
from sdserve.tasks import REQUEST_MODELS
from sdserve.tracing import span
from sdserve.tracker import JobTracker
from worker.device import DeviceConfig
from worker.outputs import library_versions, write_manifest, write_mask, write_outputs
from worker.pipelines import PipelineCache
from worker.progress import Member, StepReporter
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


def worker_name(configured: str | None = None) -> str:
    """``<configured name or host>.<pid>.<random>``: unique per process *incarnation*, readable in logs.

    Liveness is keyed by name (the presence hash the janitor checks, RQ's worker hash). A container restarted
    in its pod keeps the pod name (SDSERVE_WORKER_NAME) and often pid 1: it must not pass for the worker that
    died, or the job that worker was running is never requeued, and RQ refuses to start it for minutes.
    """
    return f"{configured or socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


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
        return self.execute_batch([job_id])[job_id]

    def execute_batch(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Run one job, or several compatible txt2img jobs as one batch; returns each job's outcome.

        Never raises for the jobs' own failures: those go on their records.
        """
        # 1. Claim each job: queued (or a retried running) → running. Ended or canceled: skip it.
        outcomes, claimed = self._claim(job_ids)
        if not claimed:
            return outcomes
        ids = [record.id for record, _, _ in claimed]
        busy_started = time.perf_counter()
        try:
            first = claimed[0][0]
            with (
                bind(
                    job_id=ids[0] if len(ids) == 1 else ",".join(ids),
                    request_id=first.request_id,
                    model=first.model,
                    task=first.task,
                ),
                span(
                    "sdserve.job", parent=first.traceparent, **{"sdserve.job_id": first.id, "sdserve.batch": len(ids)}
                ),
            ):
                done = self._run(claimed)
            outcomes.update(done)
        except JobCanceled:
            for record, _, timings in claimed:
                self.store.delete_prefix(f"outputs/{record.id}")
                self.tracker.cancel(record.id, timings)
                outcomes[record.id] = {"status": "canceled"}
            log.info("jobs %s canceled", ids)
        except JobTimeoutException:
            for record, _, timings in claimed:
                self._fail(record.id, "timeout", "The job ran out of time", "it ran longer than its timeout", timings)
                outcomes[record.id] = {"status": "failed"}
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            detail = str(exc).split("\n")[0]
            for record, _, timings in claimed:
                self._fail(record.id, "out-of-memory", "Out of accelerator memory", detail, timings)
                outcomes[record.id] = {"status": "failed"}
        except SdserveError as exc:
            for record, _, timings in claimed:
                self._fail(record.id, exc.slug, exc.title, exc.detail, timings)
                outcomes[record.id] = {"status": "failed"}
        except Exception:
            log.exception("jobs %s failed", ids)
            for record, _, timings in claimed:
                detail = f"the worker failed unexpectedly (see worker {self.name}'s log)"
                self._fail(record.id, "internal", "Internal error", detail, timings)
                outcomes[record.id] = {"status": "failed"}
        finally:
            BUSY_SECONDS.inc(time.perf_counter() - busy_started)
            self._observe(claimed, outcomes)
        return outcomes

    def _claim(
        self, job_ids: list[str]
    ) -> tuple[dict[str, dict[str, Any]], list[tuple[JobRecord, float, dict[str, float]]]]:
        """Mark each job running; the ones that cannot start (ended, canceled, expired) get their outcome."""
        outcomes: dict[str, dict[str, Any]] = {}
        claimed: list[tuple[JobRecord, float, dict[str, float]]] = []
        for job_id in job_ids:
            record = self.tracker.load(job_id)
            if record is None:
                log.warning("job %s has no record (expired?); skipping", job_id)
                outcomes[job_id] = {"status": "missing"}
                continue
            state = self.tracker.start(job_id, self.name, {"attempt": record.attempts + 1, "batch": len(job_ids)})
            if state == "cancel":
                self.tracker.cancel(job_id)
                outcomes[job_id] = {"status": "canceled"}
            elif state != "ok":
                log.info("job %s is %s; skipping", job_id, state)
                outcomes[job_id] = {"status": state}
            else:
                started = time.time()
                claimed.append((record, started, {"queued_ms": (started - record.created_at) * 1000}))
        return outcomes, claimed

    def _observe(
        self, claimed: list[tuple[JobRecord, float, dict[str, float]]], outcomes: dict[str, dict[str, Any]]
    ) -> None:
        """Metrics and one log line per ended job: outcome, phases, images."""
        phases = {
            "queue_wait": "queued_ms", "model_load": "model_load_ms", "adapters": "adapters_ms",
            "denoise": "inference_ms", "decode": "decode_ms", "upload": "upload_ms",
        }  # fmt: skip
        for record, _, timings in claimed:
            status = outcomes.get(record.id, {}).get("status", "unknown")
            JOBS_FINISHED.labels(record.model, record.task, status).inc()
            for phase, field in phases.items():
                if field in timings:
                    JOB_PHASE.labels(record.model, record.task, phase).observe(timings[field] / 1000)
            if status == "succeeded":
                IMAGES.labels(record.model, record.task).inc(int(record.request.get("num_images", 1)))
            elif status == "failed":
                problem = (self.tracker.load(record.id) or record).error
                slug = problem.type.rsplit("/", 1)[-1] if problem else "unknown"
                JOB_FAILURES.labels(record.model, record.task, slug).inc()
            log.info(
                "job %s %s",
                record.id,
                status,
                extra={
                    "job_id": record.id, "request_id": record.request_id, "model": record.model, "task": record.task,
                    "status": status, "batch": len(claimed), **{k: round(v, 2) for k, v in timings.items()},
                },
            )  # fmt: skip
        if claimed:
            BATCH_SIZE.observe(sum(int(r.request.get("num_images", 1)) for r, _, _ in claimed))
        RESIDENT_MODELS.set(len(self.pipelines.loaded()))
        if torch.cuda.is_available():
            GPU_MEMORY.set(torch.cuda.memory_allocated())
            GPU_MEMORY_PEAK.set(torch.cuda.max_memory_allocated())

    def _fail(self, job_id: str, slug: str, title: str, detail: str, timings: dict[str, float]) -> None:
        self.tracker.fail(job_id, JobError(type=problem_type(slug), title=title, detail=detail), timings)

    def _run(self, claimed: list[tuple[JobRecord, float, dict[str, float]]]) -> dict[str, dict[str, Any]]:
        # 2. Parse the stored (resolved) requests and fetch the warm model.
        first = claimed[0][0]
        request_model, recipe = TASKS[first.task]
        requests: list[Any] = [request_model.model_validate(record.request) for record, _, _ in claimed]
        load_started = time.perf_counter()
        model = self.pipelines.load(requests[0].model)
        model_load_ms = (time.perf_counter() - load_started) * 1000

        # 3. Activate the LoRA set (shared by a batch) on the warm weights; reset in `finally`, whatever happens.
        assert model.adapters is not None
        try:
            wanted = [(self.registry.lora(ref.name), ref.scale) for ref in requests[0].loras]
            activation = model.adapters.activate(
                [(spec, spec.default_scale if scale is None else scale) for spec, scale in wanted]
            )
            for _, _, timings in claimed:
                timings["model_load_ms"] = model_load_ms
                timings["adapters_ms"] = activation.load_ms + activation.activate_ms

            # 4. Run the task's recipe: one call for the whole batch.
            members = []
            offset = 0
            for (record, _, _), request in zip(claimed, requests, strict=True):
                members.append(Member(record.id, offset))
                offset += request.num_images
            reporter = StepReporter(
                self.tracker,
                members,
                first.total or requests[0].steps,
                preview_every=self.settings.preview_every_steps,
                family=model.spec.family,
            )
            shared_timings: dict[str, float] = {}
            ctx = TaskContext(
                job_id=first.id,
                model=model,
                registry=self.registry,
                reporter=reporter,
                read_input=lambda name: self.store.get(first.inputs[name]),
                timings=shared_timings,
                vae_tiling_min_pixels=self.settings.vae_tiling_min_pixels,
            )
            with span("sdserve.generate", **{"sdserve.model": model.spec.name}):
                outputs = [recipe(ctx, requests[0])] if len(claimed) == 1 else txt2img.run_batch(ctx, requests)
        finally:
            model.adapters.reset()

        # 5. Store each job's results (or drop them, for a job canceled during the batch).
        outcomes: dict[str, dict[str, Any]] = {}
        for (record, started, timings), request, output in zip(claimed, requests, outputs, strict=True):
            if record.id in reporter.stopped:
                outcomes[record.id] = {"status": "canceled"}
                continue
            timings.update(shared_timings)
            with span("sdserve.store", **{"sdserve.job_id": record.id}):
                state = self._store_results(
                    record, request, model, output, started, timings, activation.adapters, reporter
                )
            outcomes[record.id] = {"status": "succeeded" if state == "ok" else state}
        return outcomes

    def _store_results(
        self,
        record: JobRecord,
        request: Any,
        model: Any,
        output: TaskOutput,
        started: float,
        timings: dict[str, float],
        adapters: list[dict[str, object]],
        reporter: StepReporter,
    ) -> str:
        # Deterministic keys: a job that runs twice overwrites its objects, never duplicates them.
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
            "inputs": record.inputs,
            "mask": mask_key,
            "adapters": adapters,
            "worker": {"name": self.name, "device": self.device.describe(), "attention": model.attention},
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
            self.store.delete_prefix(f"outputs/{record.id}")
            self.tracker.cancel(record.id, timings)
            return "canceled"
        if state != "ok":
            log.info("job %s ended (%s) elsewhere before it could succeed", record.id, state)
        return state
