"""Dynamic batching: take, with a job, the queued jobs that can share its forward passes.

Jobs batch together when they would run the same computation but for prompts and seeds: txt2img on the same
model, at the same size, steps, scheduler, guidance and LoRA set, with the same files (by digest) of their
keys' own adapters (a LoRA or embedding of one name but another key's is another adapter), and, since SDXL
treats an empty negative prompt specially, all with or all without a negative prompt (styles included). The
batcher looks at the head of the job's queue, picks compatible jobs in queue order up to ``max_batch_images``
images, lingers a few milliseconds for more only when the queue already held jobs (an idle worker starts at
once), and claims them atomically into the queue's claimed list (a job another worker took meanwhile is not
claimed; one this worker dies holding is given back by the janitor).

Incompatible jobs keep their places: the next job a worker takes is always the oldest one left, so nothing
waits behind more than one batch (bounded waiting, no starvation).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from pydantic import ValidationError

from sdserve.contract.lifecycle import JobStatus
from sdserve.images.requests import Txt2ImgRequest, parse_request
from sdserve.keys import Keys
from sdserve.registry import Registry, RegistryHolder
from sdserve.replies import text

SCAN = 64
"""How many queued jobs a batcher looks at."""

_CLAIM = """
-- KEYS[1] the queue, KEYS[2] its claimed list. Claim each job still queued there; returns those claimed.
local claimed = {}
for _, id in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, id) == 1 then
    redis.call('RPUSH', KEYS[2], id)
    table.insert(claimed, id)
  end
end
return claimed
"""


def batch_key(request: Any, registry: Registry) -> tuple[Any, ...] | None:
    """What must be equal for two jobs to share forward passes (None: this job never batches)."""
    if not isinstance(request, Txt2ImgRequest):
        return None
    negative = bool(request.negative_prompt)
    if request.style is not None and request.style in registry.styles:
        negative = negative or bool(registry.styles[request.style].negative_prompt)
    loras = tuple((lora.name, lora.scale) for lora in request.loras)
    owned = tuple((a.kind, a.name, a.token, a.sha256) for a in request.owned_adapters)  # one owner's files
    return (
        request.model, request.width, request.height, request.steps, request.scheduler, request.guidance_scale,
        loras, owned, negative,
    )  # fmt: skip


class Batcher:
    """Find and claim queued jobs compatible with one just taken."""

    def __init__(
        self, connection: redis.Redis, keys: Keys, registry: RegistryHolder, *, max_images: int, linger_ms: int
    ) -> None:
        self.redis = connection
        self.holder = registry
        self.keys = keys
        self.max_images = max_images
        self.linger = linger_ms / 1000
        self._claim = connection.register_script(_CLAIM)

    def _queued_request(self, row: list[Any]) -> Any:
        request, status = row
        if not request or text(status) != JobStatus.QUEUED.value:
            return None
        try:
            return parse_request(json.loads(text(request)))  # the record's hash holds the request as JSON text
        except (ValueError, ValidationError):
            return None

    def collect(self, job_id: str, queue: str) -> list[str]:
        """Ids of queued jobs (claimed: gone from the queue) to run with ``job_id``; often none."""
        if self.max_images <= 1:
            return []
        registry = self.holder.current
        head = self._queued_request(self.redis.hmget(self.keys.job(job_id), ["request", "status"]))
        key = batch_key(head, registry) if head is not None else None
        if key is None:
            return []
        room = self.max_images - head.num_images
        chosen: list[str] = []
        images: dict[str, int] = {}
        deadline = time.monotonic() + self.linger
        queue_key = self.keys.queue_key(queue)
        while room > 0:
            ids = [text(i) for i in self.redis.lrange(queue_key, 0, SCAN - 1)]
            if not ids:
                break  # an empty queue: start now
            with self.redis.pipeline(transaction=False) as pipe:
                for other in ids:
                    pipe.hmget(self.keys.job(other), ["request", "status"])
                rows = pipe.execute()
            picked, want = [], room
            for other, row in zip(ids, rows, strict=True):
                if other in images or other == job_id:
                    continue
                request = self._queued_request(row)
                if request is None or batch_key(request, registry) != key or request.num_images > want:
                    continue
                picked.append(other)
                images[other] = request.num_images
                want -= request.num_images
                if want <= 0:
                    break
            if picked:
                got = [text(c) for c in self._claim(keys=[queue_key, self.keys.claimed(queue)], args=picked)]
                chosen += got
                room -= sum(images[c] for c in got)
            if room <= 0 or time.monotonic() >= deadline:
                break
            time.sleep(min(0.003, max(0.0, deadline - time.monotonic())))
        return chosen
