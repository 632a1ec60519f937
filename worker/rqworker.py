"""The RQ worker class: in-process execution (no fork: CUDA and warm weights survive) with
heartbeats while a job runs.

RQ's ``SimpleWorker`` sets a job's heartbeat once, at start, for the whole timeout; a worker that
dies mid-job would leave the job looking alive for that long. ``SdWorker`` keeps a background
thread that refreshes the worker's and the running job's heartbeats every ``heartbeat_seconds``
with a short TTL, and advertises what the worker serves for ``GET /v1/models``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException, TimerDeathPenalty, UnixSignalDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from sdserve.keys import Keys
from worker import jobs
from worker.batching import Batcher

log = logging.getLogger(__name__)


class SdWorker(SimpleWorker):
    """A non-forking RQ worker with live heartbeats and a presence record."""

    def __init__(
        self,
        *args: Any,
        keys: Keys,
        heartbeat_seconds: float,
        presence: Callable[[], dict[str, str]],
        served: list[str],
        ready_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sd_keys = keys
        self.heartbeat_seconds = heartbeat_seconds
        self.presence = presence
        self.served = served
        self.ready_file = ready_file
        # Signals only reach the main thread; elsewhere (tests, embedding) time out with a timer.
        in_main = threading.current_thread() is threading.main_thread()
        self.death_penalty_class = UnixSignalDeathPenalty if in_main else TimerDeathPenalty
        self._current: list[tuple[Job, Any]] = []
        self.batcher: Batcher | None = None
        self.stopping = False
        self.ticks: list[tuple[float, Callable[[], object]]] = []
        """Chores the heartbeat thread runs every so many seconds (the janitor, registry reloads)."""
        self._last_tick: dict[int, float] = {}
        self._stop_beating = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="sdserve-heartbeat", daemon=True)
        self._queue_models = {q.name: q.name.removeprefix(f"{keys.prefix}:") for q in self.queues}

    # --- heartbeats -----------------------------------------------------------------------
    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Short TTL: a dead worker's job is noticed within a few heartbeats, not a whole timeout."""
        return int(self.heartbeat_seconds * 4) + 10

    def advertise(self, connection: redis.Redis | None = None) -> None:
        """Publish what this worker serves and that it is alive."""
        conn = connection or self.connection
        key = self.sd_keys.worker(self.name)
        busy = bool(self._current)
        with conn.pipeline() as pipe:
            now = time.time()
            fields: dict[Any, Any] = {**self.presence(), "busy": "1" if busy else "0", "seen_at": repr(now)}
            pipe.hset(key, mapping=fields)
            pipe.expire(key, int(self.heartbeat_seconds * 4) + 10)
            pipe.zadd(self.sd_keys.workers(), {self.name: now})
            pipe.zadd(self.sd_keys.served_models(), dict.fromkeys(self.served, now))
            pipe.execute()
        if self.ready_file is not None:
            self.ready_file.touch()  # warm (work() starts after warm-up) and in touch with Redis

    def retire(self) -> None:
        """Remove the presence record (clean shutdown)."""
        try:
            with self.connection.pipeline() as pipe:
                pipe.delete(self.sd_keys.worker(self.name))
                pipe.zrem(self.sd_keys.workers(), self.name)
                pipe.execute()
        except redis.RedisError:
            log.warning("could not remove worker presence for %s", self.name)

    def _beat(self) -> None:
        while not self._stop_beating.wait(self.heartbeat_seconds):
            try:
                self.advertise()
                for job, execution in list(self._current):
                    self.maintain_heartbeats(job, execution)
                now = time.monotonic()
                for i, (every, chore) in enumerate(self.ticks):
                    if now - self._last_tick.get(i, 0.0) >= every:
                        self._last_tick[i] = now
                        chore()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat thread error")

    # --- RQ hooks -------------------------------------------------------------------------
    def request_stop(self, signum: Any, frame: Any) -> None:
        """A warm shutdown (SIGTERM, Ctrl-C, a drain command): finish the current job, take no other."""
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _install_signal_handlers(self) -> None:
        """Signals reach the main thread only; a worker embedded in another thread is stopped by its host."""
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()  # type: ignore[no-untyped-call]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Wait for a job on the queues of models that are not paused (re-checked every few seconds)."""
        self.set_state(WorkerStatus.IDLE)
        pause = 1.0
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
                paused = {
                    m.decode() if isinstance(m, bytes) else str(m)
                    for m in self.connection.smembers(self.sd_keys.paused())
                }
                queues = [q for q in self.queues if self._queue_models[q.name] not in paused]
                if not queues:
                    if timeout is None:
                        return None
                    time.sleep(1)
                    continue
                wait = None if timeout is None else min(timeout, 5)
                result = self.queue_class.dequeue_any(
                    queues,
                    wait,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
                pause = 1.0
                if result is not None or timeout is None:
                    return result
            except DequeueTimeout:
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable while waiting for jobs (%s); retrying in %.0fs", exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def execute_job(self, job: Job, queue: Queue) -> None:
        extras = self.batcher.collect(job.id, queue.key) if self.batcher is not None else []
        if extras:
            self.execute_batch(job, extras, queue)
            return
        execution = self.prepare_execution(job)
        self._current = [(job, execution)]
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._current = []
        self.set_state(WorkerStatus.IDLE)

    def execute_batch(self, job: Job, extra_ids: list[str], queue: Queue) -> None:
        """Run a job and the compatible jobs the batcher claimed for it as one batch.

        Each claimed job gets RQ's usual bookkeeping (started registry, heartbeats, finished or failed),
        so a batch that dies with its worker is recovered like any running job.
        """
        members = [job]
        for job_id in extra_ids:
            extra = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
            members.append(extra)
        current = []
        for member in members:
            execution = self.prepare_execution(member)
            self.prepare_job_execution(member, remove_from_intermediate_queue=member is job and len(self.queues) == 1)
            current.append((member, execution))
        self._current = current
        for member in members:
            member.started_at = now()
        try:
            timeout = max(m.timeout or self.queue_class.DEFAULT_TIMEOUT for m in members)
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                outcomes = jobs.current().execute_batch([m.id for m in members])
            for member, execution in current:
                member._result = outcomes.get(member.id, {"status": "missing"})
                member._status = JobStatus.FINISHED
                self.handle_execution_ended(member, queue, member.success_callback_timeout)
                self.handle_job_success(
                    job=member, queue=queue, started_job_registry=queue.started_job_registry, execution=execution
                )
        except Exception:
            log.exception("batch %s failed outside the jobs' own handling", [m.id for m in members])
            for member, execution in current:
                member.ended_at = now()
                self.handle_job_failure(
                    member,
                    queue,
                    started_job_registry=queue.started_job_registry,
                    exc_string="batch failed",
                    execution=execution,
                )
        finally:
            self._current = []
        self.set_state(WorkerStatus.IDLE)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop, restarted when it gives up on a Redis outage (it otherwise just quits)."""
        burst = bool(kwargs.get("burst") or (args[0] if args else False))
        try:
            self.advertise()
        except redis.RedisError as exc:
            log.warning("could not advertise this worker yet: %s", exc)
        self._beater.start()
        worked = False
        try:
            while True:
                worked = bool(super().work(*args, **kwargs)) or worked
                if burst or self._stop_requested or self.stopping:
                    return worked
                log.warning("the work loop stopped (Redis trouble?); restarting it in 2s")
                time.sleep(2)
        finally:
            self._stop_beating.set()
            self.retire()
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)

    @staticmethod
    def presence_fields(models: list[str], resident: list[str], device: str, ready: bool) -> dict[str, str]:
        """The presence hash's fields: served models, the ones loaded now, device, readiness."""
        return {
            "models": json.dumps(models),
            "resident": json.dumps(resident),
            "device": device,
            "ready": "1" if ready else "0",
        }
