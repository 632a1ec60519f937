"""The RQ worker: RQ's work loop and bookkeeping, with sdserve's own way of taking jobs and staying visible.

* **In process** (RQ's ``SimpleWorker``: no fork), so CUDA and warm weights survive between jobs.
* **Oldest job first across queues.** RQ drains its queues in the order given; this worker takes, in one
  Lua step (``sdserve.jobs.scripts.POP``), the oldest job at the head of any queue it serves that is not
  paused (best priority first), moving it to that queue's claimed list so that the janitor can give it back
  if the worker dies before starting it. A paused queue is skipped in that same step, and a job taken just
  before a pause is put back when its start sees the pause: once a pause has answered, no job of the queue
  starts. An idle worker blocks on the queues' bells (rung with every new job), so it starts at once.
* **Live heartbeats.** RQ's ``SimpleWorker`` sets a job's heartbeat once, for the whole timeout; a worker that
  dies mid-job would leave the job looking alive for that long. A background thread refreshes the worker's
  presence (``sdserve.jobs.presence``) and the running jobs' heartbeats every ``heartbeat_seconds``, and runs
  periodic chores (the janitor, registry reloads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import clean_registries
from rq.timeouts import JobTimeoutException, TimerDeathPenalty, UnixSignalDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker_registration import clean_worker_registry

from sdserve.jobs import scripts
from sdserve.jobs.presence import ADVERTISE, WorkerPresence, advertise, presence_ttl, retire
from sdserve.keys import Keys
from sdserve.replies import UNAVAILABLE, text
from worker.engine.runner import Engine

log = logging.getLogger(__name__)

BELL_WAIT_SECONDS = 5
"""How long an idle worker blocks on its queues' bells before it looks again (heartbeats go on meanwhile)."""


class SdWorker(SimpleWorker):
    """A non-forking RQ worker that takes the oldest job across its queues, with live heartbeats."""

    def __init__(
        self,
        queues: list[Queue],
        *,
        keys: Keys,
        engine: Engine,
        priorities: dict[str, int],
        heartbeat_seconds: float,
        presence: Callable[[], WorkerPresence],
        ready_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(queues, **kwargs)
        self.sd_keys = keys
        self.engine = engine
        self.heartbeat_seconds = heartbeat_seconds
        self.presence = presence
        self.ready_file = ready_file
        # Signals only reach the main thread; elsewhere (tests, embedding) time out with a timer.
        in_main = threading.current_thread() is threading.main_thread()
        self.death_penalty_class = UnixSignalDeathPenalty if in_main else TimerDeathPenalty
        self._current: list[tuple[Job, Any]] = []
        self.stopping = False
        self.ticks: list[tuple[float, Callable[[], object]]] = []
        """Chores the heartbeat thread runs every so many seconds (the janitor, registry reloads)."""
        self._last_tick: dict[int, float] = {}
        self._stop_beating = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="sdserve-heartbeat", daemon=True)
        self._by_engine_name = {keys.queue_of_key(q.key): q for q in self.queues}
        self._priorities = priorities
        self._pop = self.connection.register_script(scripts.POP)
        self._advertise = self.connection.register_script(ADVERTISE)

    @property
    def busy(self) -> bool:
        return bool(self._current)

    # --- presence and heartbeats ---------------------------------------------------------------
    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Short TTL: a dead worker's job is noticed within a few heartbeats, not a whole timeout."""
        return presence_ttl(self.heartbeat_seconds)

    def advertise(self) -> None:
        """Publish what this worker serves and that it is alive."""
        advertise(self.connection, self.sd_keys, self.presence(), self._advertise)
        if self.ready_file is not None:
            self.ready_file.touch()  # warm (work() starts after warm-up) and in touch with Redis

    def retire(self) -> None:
        """Remove the presence record (clean shutdown)."""
        try:
            retire(self.connection, self.sd_keys, self.name)
        except redis.RedisError:
            log.warning("could not remove worker presence for %s", self.name)

    def _beat(self) -> None:
        while not self._stop_beating.wait(self.heartbeat_seconds):
            try:
                self.advertise()
                for job, execution in list(self._current):
                    self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            except Exception:
                log.exception("heartbeat failed")
                continue
            clock = time.monotonic()
            for i, (every, chore) in enumerate(self.ticks):
                if clock - self._last_tick.get(i, 0.0) < every:
                    continue
                self._last_tick[i] = clock
                try:
                    chore()
                except redis.RedisError as exc:
                    log.warning("%s: redis unavailable (%s)", getattr(chore, "__qualname__", "chore"), exc)
                except Exception:
                    log.exception("%s failed", getattr(chore, "__qualname__", "a heartbeat chore"))

    # --- taking jobs --------------------------------------------------------------------------
    def request_stop(self, signum: Any, frame: Any) -> None:
        """A warm shutdown (SIGTERM, Ctrl-C, a drain command): finish the current job, take no other."""
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def _install_signal_handlers(self) -> None:
        """Signals reach the main thread only; a worker embedded in another thread is stopped by its host."""
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()  # type: ignore[no-untyped-call]

    def clean_registries(self) -> None:
        """RQ's registry maintenance, without its intermediate-queue cleanup: that one fails a job RQ finds
        taken but not started, where sdserve's janitor gives it back to its queue."""
        for queue in self.queues:
            if queue.acquire_maintenance_lock():
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.release_maintenance_lock()  # type: ignore[no-untyped-call]
        self.last_cleaned_at = now()  # type: ignore[assignment]

    def take(self) -> tuple[Job, Queue] | None:
        """Take the oldest job across this worker's queues that are not paused (one Lua step), or None."""
        k = self.sd_keys
        names = list(self._by_engine_name)
        keys = [k.paused()]
        args: list[Any] = [k.job(""), len(names)]
        for name in names:
            keys += [k.queue_key(name), k.claimed(name), k.bell(name)]
            args += [name, self._priorities.get(name, 0)]
        while True:
            taken = self._pop(keys=keys, args=args)
            if not taken:
                return None
            name, job_id = text(taken[0]), text(taken[1])
            try:
                job = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
            except NoSuchJobError:  # RQ's own hash is gone; our record (if any) stays the truth
                self.connection.lrem(k.claimed(name), 0, job_id)
                log.warning("job %s has no RQ job any more; dropped from its queue", job_id)
                continue
            return job, self._by_engine_name[name]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Wait for a job (``timeout`` None: do not wait), ringing in as soon as one is queued."""
        self.set_state(WorkerStatus.IDLE)
        pause = 1.0
        bells = [self.sd_keys.bell(name) for name in self._by_engine_name]
        while True:
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
                taken = self.take()
                if taken is not None or timeout is None:
                    return taken
                self.connection.blpop(bells, timeout=min(timeout, BELL_WAIT_SECONDS))
                pause = 1.0
            except UNAVAILABLE as exc:
                log.warning("redis unavailable while waiting for jobs (%s); retrying in %.0fs", exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    # --- running them -------------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run a job and the compatible jobs its kind collects for it as one call.

        Each job gets RQ's usual bookkeeping (started registry, heartbeats, finished), so a call that dies with
        its worker is recovered like any running job.
        """
        engine_queue = self.sd_keys.queue_of_key(queue.key)
        runner = self.engine.runner_for_queue(engine_queue)
        extra_ids = runner.collect(job.id, engine_queue) if runner is not None else []
        members = [job]
        for job_id in extra_ids:
            try:
                members.append(Job.fetch(job_id, connection=self.connection, serializer=self.serializer))
            except NoSuchJobError:
                self.connection.lrem(self.sd_keys.claimed(engine_queue), 0, job_id)
        current = []
        for member in members:
            execution = self.prepare_execution(member)
            self.prepare_job_execution(member, remove_from_intermediate_queue=False)  # the start removes it
            member.started_at = now()
            current.append((member, execution))
        self._current = current
        try:
            timeout = max(m.timeout or self.queue_class.DEFAULT_TIMEOUT for m in members)
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                outcomes = self.engine.execute([m.id for m in members])
            for member, execution in current:
                member._result = outcomes.get(member.id, "missing")
                member._status = JobStatus.FINISHED
                self.handle_execution_ended(member, queue, member.success_callback_timeout)
                self.handle_job_success(
                    job=member, queue=queue, started_job_registry=queue.started_job_registry, execution=execution
                )
        except Exception:
            log.exception("jobs %s failed outside their own handling", [m.id for m in members])
            for member, execution in current:
                member.ended_at = now()
                self.handle_job_failure(
                    member, queue, started_job_registry=queue.started_job_registry, exc_string="failed",
                    execution=execution,
                )  # fmt: skip
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
