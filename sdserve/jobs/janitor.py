"""The janitor: no accepted job is lost when a worker dies, and none stays running forever.

RQ alone does not keep that promise for an in-process GPU worker: a worker killed outright leaves its job
"started" until a registry sweep long after. Every worker (and the webhook dispatcher, so that recovery does
not need a live worker) sweeps every few seconds, one at a time (a Redis lock). Every decision is taken on
Redis's clock (``TIME``), never on the sweeping machine's:

1. A *running* job whose worker's presence has expired (four heartbeats plus ten seconds after its last
   beat) goes back to the front of its queue, or, after ``max_attempts`` runs, ends ``failed`` with the
   ``worker-lost`` problem.
2. A running job past its own timeout plus a grace minute ends ``failed`` with the ``timeout`` problem,
   whatever its worker is doing.
3. A job a dying worker had taken but not started (it sits in its queue's claimed list, its record still
   ``queued``) goes back to the front of its queue once the janitor has seen it there for 30 s.

Each change names the worker and the attempt it expects, so a sweep never races the worker's own finish nor
a rerun; and a superseded worker's late writes are refused by the scripts (``sdserve.jobs.scripts``).
"""

from __future__ import annotations

import json
import logging

import redis

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.problems import TIMEOUT, WORKER_LOST, ProblemType
from sdserve.jobs import scripts
from sdserve.jobs.presence import is_alive
from sdserve.jobs.record import JobRecord, from_hash
from sdserve.jobs.tracker import JobTracker, encode, problem_error
from sdserve.keys import RQ_QUEUE_PREFIX, Keys
from sdserve.observe.metrics import Metrics
from sdserve.replies import text

log = logging.getLogger(__name__)

CLAIMED_GRACE_SECONDS = 30.0
"""How long a job may sit taken-but-not-started before it goes back to its queue."""
TIMEOUT_GRACE_SECONDS = 60.0
"""How long past its own timeout a running job may run before the janitor fails it."""
LOCK_SECONDS = 20


def redis_now(client: redis.Redis) -> float:
    """The server's clock, in Unix seconds."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


class Janitor:
    """Sweep for jobs whose worker died, jobs past their deadline, and jobs taken but never started."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        max_attempts: int,
        job_ttl: int,
        metrics: Metrics,
        claimed_grace: float = CLAIMED_GRACE_SECONDS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.max_attempts = max_attempts
        self.metrics = metrics
        self.claimed_grace = claimed_grace
        self.tracker = JobTracker(client, keys, job_ttl=job_ttl)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._unclaim = client.register_script(scripts.UNCLAIM)

    def sweep(self) -> bool:
        """One pass, if no other process is sweeping; returns whether it ran."""
        lock = self.keys.janitor_lock()
        if not self.redis.set(lock, "1", nx=True, ex=LOCK_SECONDS):
            return False
        try:
            now = redis_now(self.redis)
            self._running(now)
            self._claimed(now)
        finally:
            self.redis.delete(lock)
        return True

    def _fail(self, record: JobRecord, problem: ProblemType, detail: str) -> None:
        error = problem_error(problem, detail)
        state = self.tracker.finish(
            record, JobStatus.FAILED, attempt=record.attempts,
            event={"error": error.model_dump(mode="json", exclude_none=True)}, error=error,
        )  # fmt: skip
        if state == "ok":
            self.metrics.recovered.labels("failed").inc()
            self.metrics.jobs_finished.labels(record.kind, record.task, record.model, JobStatus.FAILED.value).inc()
            self.metrics.job_failures.labels(record.kind, record.task, record.model, problem.slug).inc()
            log.warning("job %s failed: %s", record.id, detail, extra={"job_id": record.id, "problem": problem.slug})

    def _running(self, now: float) -> None:
        for raw_id in self.redis.zrange(self.keys.running(), 0, -1):
            job_id = text(raw_id)
            raw = self.redis.hgetall(self.keys.job(job_id))
            record = from_hash(raw) if raw else None
            if record is None or record.status is not JobStatus.RUNNING:
                self.redis.zrem(self.keys.running(), job_id)
                continue
            started = record.started_at or now
            if record.timeout and now > started + record.timeout + TIMEOUT_GRACE_SECONDS:
                self._fail(record, TIMEOUT, f"it ran longer than its {record.timeout}s timeout")
                continue
            if record.worker and is_alive(self.redis, self.keys, record.worker):
                continue
            if record.attempts >= self.max_attempts:
                self._fail(record, WORKER_LOST, f"its worker died during each of its {record.attempts} runs")
                continue
            data = encode({"status": JobStatus.QUEUED.value, "reason": "worker-lost", "attempts": record.attempts})
            k = self.keys
            keys = [
                k.job(job_id), k.events(job_id), k.running(), k.queue_key(record.queue), k.claimed(record.queue),
                k.bell(record.queue),
            ]  # fmt: skip
            if self._requeue(keys=keys, args=[record.worker or "", record.attempts, data]):
                self.metrics.recovered.labels("requeued").inc()
                log.warning("job %s requeued: worker %s is gone", job_id, record.worker, extra={"job_id": job_id})

    def _queues(self) -> list[str]:
        """Every queue of this deployment RQ knows (RQ registers each queue it enqueues on)."""
        ours = f"{RQ_QUEUE_PREFIX}{self.keys.prefix}:"
        return [
            self.keys.queue_of_key(k)
            for k in map(text, self.redis.smembers(self.keys.rq_queues()))
            if k.startswith(ours)
        ]

    def _claimed(self, now: float) -> None:
        seen_key = self.keys.janitor_claimed_seen()
        seen = {text(k): float(v) for k, v in self.redis.hgetall(seen_key).items()}
        still: dict[str, float] = {}
        for queue in self._queues():
            for raw_id in self.redis.lrange(self.keys.claimed(queue), 0, -1):
                job_id = text(raw_id)
                status = self.redis.hget(self.keys.job(job_id), "status")
                first = seen.get(job_id, now)
                if status is None or text(status) != JobStatus.QUEUED.value or now - first >= self.claimed_grace:
                    k = self.keys
                    keys = [k.job(job_id), k.claimed(queue), k.queue_key(queue), k.bell(queue)]
                    if self._unclaim(keys=keys, args=[job_id]):
                        self.metrics.recovered.labels("requeued").inc()
                        log.warning("job %s was taken but never started; requeued", job_id, extra={"job_id": job_id})
                    continue
                still[job_id] = first
        with self.redis.pipeline() as pipe:
            pipe.delete(seen_key)
            if still:
                pipe.hset(seen_key, mapping={k: json.dumps(v) for k, v in still.items()})
            pipe.execute()
