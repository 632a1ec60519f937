"""The dispatcher: sends webhook deliveries (a process of its own, never the GPU worker).

Deliveries wait in a sorted set scored by when they are due. The dispatcher *leases* due ones (their
score moves a minute ahead, atomically), sends them, then removes them or reschedules them. If the
dispatcher dies mid-send, the lease runs out and another dispatcher (or the restarted one) picks the
delivery up again: a restart loses nothing, and several dispatchers can run side by side.

Terminal events are retried on ``webhook_retry_schedule`` (±20 % jitter) with the same ``webhook-id``;
``Retry-After`` is honoured; 410 Gone stops retrying; a redirect counts as a failure and is never
followed. Progress and started events are sent once, best effort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime

import httpx
import redis.asyncio as aioredis

from sdserve.contract.lifecycle import JobEvent
from sdserve.jobs.kind import Kinds
from sdserve.jobs.record import JobRecord, from_hash
from sdserve.jobs.view import ViewContext
from sdserve.keys import Keys
from sdserve.observe.logs import bind
from sdserve.observe.metrics import Metrics, attempt_label
from sdserve.replies import UNAVAILABLE, text
from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore
from sdserve.webhooks.deliveries import Delivery, DeliveryRecord
from sdserve.webhooks.delivery import AttemptResult, deliver
from sdserve.webhooks.guard import WebhookPolicy

log = logging.getLogger("sdserve.webhooks")

MAX_RETRY_AFTER = 24 * 3600
"""A receiver's Retry-After is honoured up to a day."""

LEASE_SECONDS = 60
"""How long a claimed delivery is hidden from other dispatchers (longer than one attempt can take)."""

# Both on Redis's clock: due times are written by the job scripts with TIME, so they are read with TIME too.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id) end
return due
"""
_RESCHEDULE = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2]), ARGV[1])
return 1
"""


class Dispatcher:
    """Lease due deliveries, send them, record each attempt, reschedule failures."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        store: ObjectStore,
        *,
        kinds: Kinds,
        secret: str,
        metrics: Metrics,
        lease_seconds: float = LEASE_SECONDS,
        policy: WebhookPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.redis = client
        self.store = store
        self.kinds = kinds
        self.metrics = metrics
        self.keys = Keys(settings.key_prefix)
        self.policy = policy or WebhookPolicy.build(
            settings.webhook_allowed_ports, settings.webhook_allowed_hosts, settings.webhook_allowed_networks
        )
        self.secret = secret
        self.schedule = list(settings.webhook_retry_schedule)
        self.base_url = settings.public_base_url()
        self._claim = client.register_script(_CLAIM)
        self._reschedule = client.register_script(_RESCHEDULE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    async def claim(self, limit: int) -> list[str]:
        """Lease up to ``limit`` due deliveries (hidden from other dispatchers for ``lease_seconds``)."""
        ids = await self._claim(keys=[self.keys.webhooks_due()], args=[repr(self.lease_seconds), limit])
        return [text(i) for i in ids]

    def next_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds until retry number ``attempt`` (1-based), or None when the schedule is spent."""
        if attempt > len(self.schedule):
            return None
        delay = self.schedule[attempt - 1] * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def body(self, record: JobRecord, delivery: DeliveryRecord) -> str:
        """The JSON a receiver gets: its kind's payload (``{"type": "job.<event>", "timestamp", "data"}``)."""
        ctx = ViewContext(store=self.store, base_url=self.base_url, url_ttl=self.settings.url_ttl_seconds)
        payload = self.kinds.get(record.kind).webhook(record, JobEvent(delivery.event), json.loads(delivery.data), ctx)
        return payload.model_dump_json()

    async def attempt(self, delivery_id: str, client: httpx.AsyncClient) -> None:
        """Send one delivery once, then record, remove or reschedule it."""
        key = self.keys.delivery(delivery_id)
        raw = await self.redis.hgetall(key)
        if not raw:
            await self.redis.zrem(self.keys.webhooks_due(), delivery_id)
            return
        delivery = DeliveryRecord.from_hash(raw)
        job_raw = await self.redis.hgetall(self.keys.job(delivery.job))
        if not job_raw:
            await self.redis.zrem(self.keys.webhooks_due(), delivery_id)
            return
        record = from_hash(job_raw)
        event = JobEvent(delivery.event)
        attempt = delivery.attempt + 1
        with bind(job_id=record.id, webhook_id=delivery.webhook_id, event=event.value, attempt=attempt):
            result = AttemptResult(False, None, "no webhook", 0.0)
            if record.webhook_url:
                result = await deliver(
                    client,
                    url=record.webhook_url,
                    policy=self.policy,
                    secret=self.secret,
                    webhook_id=delivery.webhook_id,
                    body=self.body(record, delivery),
                    timeout=self.settings.webhook_timeout_seconds,
                )
            retryable = event.is_terminal and record.webhook_url is not None and not result.ok and not result.gone
            delay = self.next_delay(attempt, result.retry_after) if retryable else None
            shown = result.shown()  # the operator's log below keeps the detail; the tenant's log may not
            entry = Delivery(
                webhook_id=delivery.webhook_id, event=event.value, attempt=attempt, at=datetime.now(UTC),
                status_code=shown.status_code, error=shown.error, duration_ms=round(shown.duration_ms, 1),
                ok=result.ok, next_attempt_in=round(delay, 1) if delay is not None else None,
            )  # fmt: skip
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(self.keys.delivery_log(record.id), entry.model_dump_json())
                pipe.expire(self.keys.delivery_log(record.id), self.settings.job_ttl_seconds)
                pipe.hset(key, "attempt", str(attempt))
                if delay is None:
                    pipe.zrem(self.keys.webhooks_due(), delivery_id)
                    pipe.hset(key, "state", "delivered" if result.ok else "failed")
                else:
                    await self._reschedule(
                        keys=[self.keys.webhooks_due()], args=[delivery_id, repr(delay)], client=pipe
                    )
                await pipe.execute()
            outcome = "delivered" if result.ok else ("retry" if delay is not None else "failed")
            self.metrics.webhooks.labels(event.value, outcome, attempt_label(attempt)).inc()
            self.metrics.webhook_duration.observe(result.duration_ms / 1000)
            if result.ok:
                log.info("webhook delivered", extra={"status_code": result.status_code, "ms": result.duration_ms})
            else:
                log.warning(
                    "webhook attempt failed",
                    extra={"error": result.error, "status_code": result.status_code, "retry_in": delay},
                )

    async def _run_job(self, delivery_ids: list[str], client: httpx.AsyncClient) -> None:
        """One job's due deliveries, in order (started before progress before the end)."""
        for delivery_id in delivery_ids:
            try:
                await self.attempt(delivery_id, client)
            except Exception:
                log.exception("delivery %s crashed; its lease will make it due again", delivery_id)

    async def run(self) -> None:
        """Send deliveries until ``stopping`` is set; waits for the ones in flight to finish."""
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency)
        async with httpx.AsyncClient(follow_redirects=False, limits=limits, trust_env=False) as client:
            touched = 0.0
            while not self.stopping.is_set():
                if self.settings.ready_file is not None and time.monotonic() - touched > 5:
                    self.settings.ready_file.touch()  # alive and in touch with Redis: probes read its age
                    touched = time.monotonic()
                free = self.settings.webhook_concurrency - len(self._tasks)
                if free <= 0:
                    await asyncio.wait(self._tasks, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    ids = await self.claim(free)
                except UNAVAILABLE as exc:
                    log.warning("redis unavailable (%s); retrying", exc)
                    await asyncio.sleep(1)
                    continue
                by_job: dict[str, list[str]] = {}
                for delivery_id in ids:  # due-time order
                    by_job.setdefault(delivery_id.split(".", 1)[0], []).append(delivery_id)
                for job_ids in by_job.values():
                    task = asyncio.create_task(self._run_job(job_ids, client))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if not ids:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), timeout=0.2)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.settings.ready_file is not None:
                self.settings.ready_file.unlink(missing_ok=True)
