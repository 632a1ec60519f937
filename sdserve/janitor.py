"""The janitor: no accepted job is lost when a worker dies, and none stays running forever.

RQ alone does not keep that promise for an in-process GPU worker: a worker killed outright leaves its
job "started" until a registry sweep long after. Every worker (and the webhook dispatcher, so that
recovery does not need a live worker) sweeps every few seconds, one at a time (a Redis lock):

1. A *running* job whose worker has stopped advertising itself (its presence key expires 4 heartbeats
   plus 10 s after its last beat) goes back to the front of its model's queue, or, after
   ``max_attempts`` runs, ends ``failed`` with the ``worker-lost`` problem.
2. A running job past its own timeout plus a minute ends ``failed`` with the ``timeout`` problem,
   whatever its worker is doing.
3. A job a dying worker had popped but not yet started (it sits in RQ's intermediate list, its record
   still ``queued``) goes back to the front of the queue once it has sat there 30 s.

Requeueing is one Lua script that checks the job is still running on the dead worker, so a sweep never
races the worker's own finish. Outputs have deterministic keys and terminal states never change, so a
job that ran twice has one set of results and one terminal webhook.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from sdserve.errors import problem_type
from sdserve.events import encode_data
from sdserve.jobs import JobError
from sdserve.keys import Keys
from sdserve.metrics import RECOVERED
from sdserve.tracker import JobTracker

log = logging.getLogger(__name__)

STUCK_POPPED_SECONDS = 30
LOCK_SECONDS = 20

# KEYS: job hash, events stream, running set, RQ queue list. ARGV: worker expected, event data.
_REQUEUE = """
local s = redis.call('HMGET', KEYS[1], 'status', 'worker', 'id')
if s[1] ~= 'running' or s[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'step', '0')
redis.call('ZREM', KEYS[3], s[3])
redis.call('LPUSH', KEYS[4], s[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 2000, '*', 'event', 'queued', 'data', ARGV[2])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class Janitor:
    """Sweep for jobs whose worker died, jobs past their deadline, and popped-but-never-started jobs."""

    def __init__(self, client: redis.Redis, keys: Keys, *, max_attempts: int, queue_key: Any) -> None:
        self.redis = client
        self.keys = keys
        self.max_attempts = max_attempts
        self.queue_key = queue_key  # model -> RQ queue list key
        self.tracker = JobTracker(client, keys)
        self._requeue = client.register_script(_REQUEUE)
        self.requeued = 0
        self.failed = 0

    def sweep(self) -> bool:
        """One pass, if no other process is sweeping; returns whether it ran."""
        lock = f"{self.keys.prefix}:janitor:lock"
        if not self.redis.set(lock, "1", nx=True, ex=LOCK_SECONDS):
            return False
        try:
            self._running()
            self._popped()
        finally:
            self.redis.delete(lock)
        return True

    def _fail(self, job_id: str, slug: str, title: str, detail: str) -> None:
        if self.tracker.fail(job_id, JobError(type=problem_type(slug), title=title, detail=detail), {}):
            self.failed += 1
            RECOVERED.labels("failed").inc()
            log.warning("job %s failed: %s", job_id, detail, extra={"job_id": job_id, "problem": slug})

    def _running(self) -> None:
        now = time.time()
        for raw_id in self.redis.zrange(self.keys.running(), 0, -1):
            job_id = _text(raw_id)
            fields = self.redis.hmget(
                self.keys.job(job_id), ["status", "worker", "attempts", "model", "started_at", "timeout"]
            )
            status, worker, attempts, model, started_at, timeout = [_text(f) for f in fields]
            if status != "running":
                self.redis.zrem(self.keys.running(), job_id)
                continue
            started = float(started_at or now)
            if timeout and now > started + float(timeout) + 60:
                self._fail(job_id, "timeout", "The job ran out of time", f"it ran longer than its {timeout}s timeout")
                continue
            if self.redis.exists(self.keys.worker(worker)):
                continue  # its worker is alive
            if int(attempts or 0) >= self.max_attempts:
                self._fail(
                    job_id, "worker-lost", "The job's worker was lost",
                    f"its worker died during each of its {attempts} runs",
                )  # fmt: skip
                continue
            data = encode_data({"status": "queued", "reason": "worker-lost", "attempts": int(attempts or 0)})
            keys = [self.keys.job(job_id), self.keys.events(job_id), self.keys.running(), self.queue_key(model)]
            if self._requeue(keys=keys, args=[worker, data]):
                self.requeued += 1
                RECOVERED.labels("requeued").inc()
                log.warning("job %s requeued: worker %s is gone", job_id, worker, extra={"job_id": job_id})

    def _popped(self) -> None:
        seen_key = f"{self.keys.prefix}:janitor:popped"
        now = time.time()
        seen = {_text(k): float(v) for k, v in self.redis.hgetall(seen_key).items()}
        still: set[str] = set()
        for raw_queue in self.redis.smembers("rq:queues"):
            queue = _text(raw_queue)
            if not queue.startswith(f"rq:queue:{self.keys.prefix}:"):
                continue
            intermediate = f"{queue}:intermediate"
            for raw_id in self.redis.lrange(intermediate, 0, -1):
                job_id = _text(raw_id)
                still.add(job_id)
                if _text(self.redis.hget(self.keys.job(job_id), "status")) != "queued":
                    continue
                first = seen.setdefault(job_id, now)
                if now - first >= STUCK_POPPED_SECONDS and self.redis.lrem(intermediate, 1, job_id):
                    self.redis.lpush(queue, job_id)
                    still.discard(job_id)
                    self.requeued += 1
                    log.warning("job %s was popped but never started; requeued", job_id, extra={"job_id": job_id})
        with self.redis.pipeline() as pipe:
            pipe.delete(seen_key)
            kept = {k: v for k, v in seen.items() if k in still}
            if kept:
                pipe.hset(seen_key, mapping={k: json.dumps(v) for k, v in kept.items()})
            pipe.execute()
