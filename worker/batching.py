"""Dynamic batching: take, with a job, the queued jobs that can share its forward passes.

Jobs batch together when they would run the same computation but for prompts and seeds: txt2img on
the same model, at the same size, steps, scheduler, guidance and adapter set (and, since SDXL treats
an empty negative prompt specially, all with or all without a negative prompt, styles included). The batcher looks at
the head of the job's queue, picks compatible jobs in queue order up to ``max_batch_images`` images,
lingers a few milliseconds for more only when the queue already held jobs (an idle worker starts at
once), and claims them atomically (``LREM``: a job another worker took meanwhile is not claimed).

Incompatible jobs keep their places: the next job a worker dequeues is always the oldest one left, so
nothing waits behind more than one batch (bounded waiting, no starvation).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from sdserve.keys import Keys
from sdserve.registry import Registry

SCAN = 64
"""How many queued jobs a batcher looks at."""

_CLAIM = """
local claimed = {}
for i, id in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, id) == 1 then table.insert(claimed, id) end
end
return claimed
"""


def batch_key(request: dict[str, Any], task: str, registry: Registry) -> tuple[Any, ...] | None:
    """What must be equal for two jobs to share forward passes (None: this job never batches)."""
    if task != "txt2img":
        return None
    negative = bool(request.get("negative_prompt"))
    if request.get("style") in registry.styles:
        negative = negative or bool(registry.styles[request["style"]].negative_prompt)
    loras = tuple((lora["name"], lora["scale"]) for lora in request.get("loras", []))
    return (
        request["model"],
        request["width"],
        request["height"],
        request["steps"],
        request["scheduler"],
        request["guidance_scale"],
        loras,
        negative,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class Batcher:
    """Find and claim queued jobs compatible with one just taken."""

    def __init__(
        self, connection: redis.Redis, keys: Keys, registry: Registry, *, max_images: int, linger_ms: int
    ) -> None:
        self.redis = connection
        self.registry = registry
        self.keys = keys
        self.max_images = max_images
        self.linger = linger_ms / 1000
        self._claim = connection.register_script(_CLAIM)

    def _job(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        request, task, status = self.redis.hmget(self.keys.job(job_id), ["request", "task", "status"])
        if not request or _text(status) != "queued":
            return None
        return json.loads(request), _text(task)

    def collect(self, job_id: str, queue_key: str) -> list[str]:
        """Ids of queued jobs (claimed: gone from the queue) to run with ``job_id``; often none."""
        if self.max_images <= 1:
            return []
        head = self._job(job_id)
        if head is None:
            return []
        key = batch_key(*head, self.registry)
        if key is None:
            return []
        room = self.max_images - int(head[0].get("num_images", 1))
        chosen: list[str] = []
        images: dict[str, int] = {}
        deadline = time.monotonic() + self.linger
        while room > 0:
            ids = [_text(i) for i in self.redis.lrange(queue_key, 0, SCAN - 1)]
            if not ids:
                break  # an empty queue: start now
            with self.redis.pipeline(transaction=False) as pipe:
                for other in ids:
                    pipe.hmget(self.keys.job(other), ["request", "task", "status"])
                rows = pipe.execute()
            picked, want = [], room
            for other, (request, task, status) in zip(ids, rows, strict=True):
                if other in images or other == job_id or not request or _text(status) != "queued":
                    continue
                parsed = json.loads(request)
                count = int(parsed.get("num_images", 1))
                if batch_key(parsed, _text(task), self.registry) != key or count > want:
                    continue
                picked.append(other)
                images[other] = count
                want -= count
                if want <= 0:
                    break
            if picked:
                got = [_text(c) for c in self._claim(keys=[queue_key], args=picked)]
                chosen += got
                room -= sum(images[c] for c in got)
            if room <= 0 or time.monotonic() >= deadline:
                break
            time.sleep(min(0.003, max(0.0, deadline - time.monotonic())))
        return chosen
