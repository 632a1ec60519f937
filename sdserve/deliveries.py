"""Webhook deliveries as records: what the API shows of them, redelivery, and the payload sent.

Deliveries are created by the job transitions (``sdserve.transitions``) and sent by the dispatcher
(``sdserve.dispatcher``); each attempt is appended to the job's delivery log.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from sdserve.errors import Conflict
from sdserve.jobs import JobStatus, Progress, WebhookJob, WebhookPayload
from sdserve.keys import Keys
from sdserve.records import JobRecord
from sdserve.store import ObjectStore
from sdserve.views import job_view


def webhook_body(
    record: JobRecord,
    event: str,
    data: dict[str, Any],
    *,
    store: ObjectStore,
    base_url: str,
    url_ttl: int,
) -> str:
    """The JSON a receiver gets: ``{"type": "job.<event>", "timestamp", "data": <thin job>}``."""
    job = job_view(record, position=None, store=store, base_url=base_url, url_ttl=url_ttl)
    thin = WebhookJob.model_validate({k: v for k, v in job.model_dump().items() if k in WebhookJob.model_fields})
    if event == "progress" and "step" in data:
        thin.progress = Progress(step=data["step"], total=data["total"], fraction=data["fraction"])
        thin.status = JobStatus.RUNNING
    payload = WebhookPayload(type=f"job.{event}", timestamp=datetime.now(UTC), data=thin)
    return payload.model_dump_json()


class Deliveries:
    """The gateway's view of a job's webhook deliveries (asyncio)."""

    def __init__(self, client: Any, keys: Keys, job_ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.job_ttl = job_ttl

    async def log(self, job_id: str) -> tuple[list[dict[str, Any]], int]:
        """Every attempt so far (oldest first), and how many deliveries are still pending."""
        raw = await self.redis.lrange(self.keys.delivery_log(job_id), 0, -1)
        entries = [json.loads(item) for item in raw]
        pending = 0
        async for member, _ in self.redis.zscan_iter(self.keys.webhooks_due(), match=f"{job_id}.*"):
            pending += 1 if member else 0
        return entries, pending

    async def redeliver(self, record: JobRecord) -> str:
        """Queue the terminal event again under a new webhook id; returns the delivery id."""
        if not record.status.is_terminal:
            raise Conflict(f"job {record.id} has not ended; only its terminal event can be redelivered")
        if not record.webhook_url:
            raise Conflict(f"job {record.id} has no webhook")
        count = await self.redis.hincrby(self.keys.job(record.id), "redeliveries", 1)
        delivery_id = f"{record.id}.{record.status.value}.r{count}"
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.delivery(delivery_id),
                mapping={
                    "id": delivery_id,
                    "job": record.id,
                    "event": record.status.value,
                    "webhook_id": f"msg_{delivery_id}",
                    "attempt": "0",
                    "created_at": repr(now),
                    "data": json.dumps({"status": record.status.value, "redelivery": count}),
                },
            )
            pipe.expire(self.keys.delivery(delivery_id), self.job_ttl)
            pipe.zadd(self.keys.webhooks_due(), {delivery_id: now})
            await pipe.execute()
        return delivery_id


TERMINAL = {s.value for s in JobStatus if s.is_terminal}
