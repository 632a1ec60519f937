"""The worker's engine: claim jobs, run them with their kind's recipe, end them. Knows no kind of work.

``Engine.execute`` is the frame every job runs in:

1. **claim**: each job goes ``queued → running`` (one Lua step), which gives this run its attempt number,
   the fencing token every later write carries; a job that ended, was canceled or paused meanwhile is skipped;
2. **run** it with its kind's ``Runner`` (for image jobs: resolve inputs, select pipeline and LoRAs, denoise,
   post-process, store), which reports every step and sees a cancel at the next one;
3. **finish**: success with the result the runner returned, in the same step that makes the run's outputs the
   job's; or the problem type the exception names (timeout, out of memory, a domain error, internal); a
   canceled run ends ``canceled``; a superseded one touches nothing. Every path that does not succeed deletes
   the run's own files.

Then metrics and one log line per job: the process that ended a job counts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rq.timeouts import JobTimeoutException

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.problems import (
    INTERNAL,
    OUT_OF_MEMORY,
    STORAGE_FAILED,
    TIMEOUT,
    JobCanceled,
    JobStopped,
    ProblemType,
    SdserveError,
    StorageFull,
    Unavailable,
)
from sdserve.jobs.record import JobRecord
from sdserve.jobs.tracker import Attempt, JobTracker
from sdserve.observe.logs import bind
from sdserve.observe.metrics import Metrics
from sdserve.observe.tracing import span
from sdserve.storage.base import ObjectStore
from worker.engine.artifacts import Artifacts
from worker.engine.kind import Claimed, Runner

log = logging.getLogger(__name__)

PHASES = {
    "queue_wait": "queued_ms", "model_load": "model_load_ms", "loras": "adapters_ms", "denoise": "inference_ms",
    "decode": "decode_ms", "upload": "upload_ms",
}  # fmt: skip
"""Metric phase → the timing it is read from."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the accelerator running out of memory (torch's own type, when torch is here)."""
    return type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("torch")


class Engine:
    """Runs jobs of every kind this worker serves."""

    def __init__(
        self,
        *,
        name: str,
        tracker: JobTracker,
        store: ObjectStore,
        runners: Sequence[Runner],
        metrics: Metrics,
        device: str = "",
    ) -> None:
        self.name = name
        self.tracker = tracker
        self.store = store
        self.metrics = metrics
        self.device = device
        self.runners = {runner.kind: runner for runner in runners}
        self.queues: dict[str, Runner] = {}
        for runner in runners:
            for queue in runner.queues():
                self.queues[queue.name] = runner

    def runner_for_queue(self, queue: str) -> Runner | None:
        return self.queues.get(queue)

    def execute(self, job_ids: list[str]) -> dict[str, str]:
        """Run one job, or several compatible ones as one call; each job's outcome (its status, or why it
        did not run). Never raises for the jobs' own failures: those go on their records."""
        outcomes, claimed = self._claim(job_ids)
        if not claimed:
            return outcomes
        first = claimed[0].record
        busy = time.perf_counter()
        try:
            with (
                bind(job_id=",".join(j.id for j in claimed), request_id=first.request_id, model=first.model,
                     kind=first.kind, task=first.task),
                span("sdserve.job", parent=first.traceparent, **{"sdserve.job_id": first.id,
                                                                 "sdserve.batch": len(claimed)}),
            ):  # fmt: skip
                results = self.runners[first.kind].run(claimed)
            outcomes.update(self._succeed(claimed, results))
        except JobCanceled:
            for job in claimed:
                job.artifacts.discard()
                if job.ended is None and self.tracker.cancel(job.attempt, job.timings) == "ok":
                    job.ended = JobStatus.CANCELED.value
                outcomes[job.id] = job.ended or "stopped"
        except JobStopped as exc:
            for job in claimed:
                job.artifacts.discard()
                outcomes[job.id] = "stopped"
            log.warning("jobs %s stopped: %s", [j.id for j in claimed], exc.reason)
        except JobTimeoutException:
            self._fail(claimed, outcomes, TIMEOUT, "it ran longer than its timeout")
        except (StorageFull, Unavailable) as exc:
            self._fail(claimed, outcomes, STORAGE_FAILED, exc.detail)
        except SdserveError as exc:
            self._fail(claimed, outcomes, exc.problem, exc.detail)
        except Exception as exc:
            if out_of_memory(exc):
                self._release_accelerator_memory()
                self._fail(claimed, outcomes, OUT_OF_MEMORY, str(exc).split("\n")[0])
            else:
                log.exception("jobs %s failed", [j.id for j in claimed])
                self._fail(
                    claimed, outcomes, INTERNAL, f"the worker failed unexpectedly (see worker {self.name}'s log)"
                )
        finally:
            self.metrics.busy_seconds.inc(time.perf_counter() - busy)
            self._observe(claimed, outcomes)
        return outcomes

    # 1. claim -----------------------------------------------------------------------------------
    def _claim(self, job_ids: list[str]) -> tuple[dict[str, str], list[Claimed]]:
        outcomes: dict[str, str] = {}
        claimed: list[Claimed] = []
        for job_id in job_ids:
            record = self.tracker.load(job_id)
            if record is None:
                log.warning("job %s has no record (expired?); skipping", job_id)
                outcomes[job_id] = "missing"
                continue
            if record.kind not in self.runners:
                log.error("job %s is of kind %r, which this worker does not run", job_id, record.kind)
                outcomes[job_id] = "unknown-kind"
                continue
            started = self.tracker.start(record, self.name, {"batch": len(job_ids)})
            if not isinstance(started, Attempt):
                log.info("job %s is %s; skipping", job_id, started)
                outcomes[job_id] = started
                continue
            job = Claimed(attempt=started, artifacts=Artifacts(self.store, record.id, started.number, record.inputs))
            job.timings["queued_ms"] = max(0.0, (started.started_at - record.created_at) * 1000)  # one clock
            claimed.append(job)
        return outcomes, claimed

    # 3. finish ----------------------------------------------------------------------------------
    def _succeed(self, claimed: list[Claimed], results: dict[str, dict[str, Any]]) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        for job in claimed:
            result = results.get(job.id)
            if result is None:  # stopped during the call (canceled in a batch, or superseded)
                outcomes[job.id] = job.ended or "stopped"
                continue
            job.timings["run_ms"] = (time.perf_counter() - job.started) * 1000
            job.timings["total_ms"] = job.timings["run_ms"] + job.timings.get("queued_ms", 0.0)
            state = self.tracker.succeed(job.attempt, result=result, timings=job.timings, total=job.record.total)
            if state == "ok":
                outcomes[job.id] = JobStatus.SUCCEEDED.value
                continue
            job.artifacts.discard()  # its files never became the job's
            if state == "cancel":  # a cancel that came after the last step still wins, and nothing stays stored
                canceled = self.tracker.cancel(job.attempt, job.timings) == "ok"
                outcomes[job.id] = JobStatus.CANCELED.value if canceled else "stopped"
            else:  # ended elsewhere (failed by the janitor, superseded): not this worker's to count
                log.info("job %s ended (%s) elsewhere before it could succeed", job.id, state)
                outcomes[job.id] = "stopped"
        return outcomes

    def _fail(self, claimed: list[Claimed], outcomes: dict[str, str], problem: ProblemType, detail: str) -> None:
        for job in claimed:
            job.artifacts.discard()
            state = self.tracker.fail(job.attempt, problem, detail, job.timings)
            outcomes[job.id] = JobStatus.FAILED.value if state == "ok" else "stopped"  # else: ended elsewhere
            if state == "ok":
                self.metrics.job_failures.labels(*self._labels(job.record), problem.slug).inc()

    def _release_accelerator_memory(self) -> None:
        import torch

        torch.cuda.empty_cache()

    @staticmethod
    def _labels(record: JobRecord) -> tuple[str, str, str]:
        return record.kind, record.task, record.model

    def _observe(self, claimed: list[Claimed], outcomes: dict[str, str]) -> None:
        """Metrics and one log line per job this worker ended."""
        for job in claimed:
            status = outcomes.get(job.id, "unknown")
            labels = self._labels(job.record)
            if status in {s.value for s in JobStatus if s.is_terminal}:
                self.metrics.jobs_finished.labels(*labels, status).inc()
            for phase, field in PHASES.items():
                if field in job.timings:
                    self.metrics.job_phase.labels(*labels, phase).observe(job.timings[field] / 1000)
            log.info(
                "job %s %s", job.id, status,
                extra={
                    "job_id": job.id, "request_id": job.record.request_id, "model": job.record.model,
                    "kind": job.record.kind, "task": job.record.task, "attempt": job.attempt.number,
                    "status": status, "batch": len(claimed), **{k: round(v, 2) for k, v in job.timings.items()},
                },
            )  # fmt: skip
