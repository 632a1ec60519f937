"""`sdserve webhooks`: the process that sends webhook deliveries, never the GPU worker.

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
import signal
import time
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
import redis.exceptions

from sdserve.deliveries import TERMINAL, webhook_body
from sdserve.janitor import Janitor
from sdserve.keys import Keys
from sdserve.logs import bind, configure_logging
from sdserve.metrics import WEBHOOK_DURATION, WEBHOOKS, attempt_label, serve_metrics
from sdserve.queue import rq_queue
from sdserve.records import JobRecord
from sdserve.redischeck import warn_about_redis
from sdserve.settings import Settings
from sdserve.store import LocalStore, ObjectStore
from sdserve.webhooks import WebhookPolicy, deliver

log = logging.getLogger("sdserve.webhooks")

MAX_RETRY_AFTER = 24 * 3600
"""A receiver's Retry-After is honoured up to a day."""

LEASE_SECONDS = 60
"""How long a claimed delivery is hidden from other dispatchers (longer than one attempt can take)."""

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Dispatcher:
    """Lease due deliveries, send them, record each attempt, reschedule failures."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        store: ObjectStore,
        *,
        lease_seconds: float = LEASE_SECONDS,
        policy: WebhookPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.redis = client
        self.store = store
        self.keys = Keys(settings.key_prefix)
        self.policy = policy or WebhookPolicy.build(
            settings.webhook_allowed_ports, settings.webhook_allowed_hosts, settings.webhook_allowed_networks
        )
        self.secret = settings.webhook_signing_secret()
        self.schedule = list(settings.webhook_retry_schedule)
        self.base_url = settings.public_base_url()
        self._claim = client.register_script(_CLAIM)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    async def claim(self, limit: int) -> list[str]:
        now = time.time()
        ids = await self._claim(
            keys=[self.keys.webhooks_due()], args=[repr(now), repr(now + self.lease_seconds), limit]
        )
        return [_text(i) for i in ids]

    def next_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds until retry number ``attempt`` (1-based), or None when the schedule is spent."""
        if attempt > len(self.schedule):
            return None
        delay = self.schedule[attempt - 1] * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    async def attempt(self, delivery_id: str, client: httpx.AsyncClient) -> None:
        """Send one delivery once, then record, remove or reschedule it."""
        key = self.keys.delivery(delivery_id)
        raw = {_text(k): _text(v) for k, v in (await self.redis.hgetall(key)).items()}
        if not raw:
            await self.redis.zrem(self.keys.webhooks_due(), delivery_id)
            return
        job_raw = await self.redis.hgetall(self.keys.job(raw["job"]))
        if not job_raw:
            await self.redis.zrem(self.keys.webhooks_due(), delivery_id)
            return
        record = JobRecord.from_hash(job_raw)
        event = raw["event"]
        attempt = int(raw.get("attempt", "0")) + 1
        with bind(job_id=record.id, webhook_id=raw["webhook_id"], event=event, attempt=attempt):
            result = None
            if record.webhook_url:
                body = webhook_body(
                    record,
                    event,
                    json.loads(raw.get("data") or "{}"),
                    store=self.store,
                    base_url=self.base_url,
                    url_ttl=self.settings.url_ttl_seconds,
                )
                result = await deliver(
                    client,
                    url=record.webhook_url,
                    policy=self.policy,
                    secret=self.secret,
                    webhook_id=raw["webhook_id"],
                    body=body,
                    timeout=self.settings.webhook_timeout_seconds,
                )
            retryable = event in TERMINAL and result is not None and not result.ok and not result.gone
            delay = self.next_delay(attempt, result.retry_after if result else None) if retryable else None
            entry = {
                "webhook_id": raw["webhook_id"],
                "event": event,
                "attempt": attempt,
                "at": time.time(),
                **(
                    result.log_entry()
                    if result
                    else {"ok": False, "error": "no webhook", "status_code": None, "duration_ms": 0.0}
                ),
                "next_attempt_in": round(delay, 1) if delay is not None else None,
            }
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(self.keys.delivery_log(record.id), json.dumps(entry))
                pipe.expire(self.keys.delivery_log(record.id), self.settings.job_ttl_seconds)
                pipe.hset(key, "attempt", str(attempt))
                if delay is None:
                    pipe.zrem(self.keys.webhooks_due(), delivery_id)
                    pipe.hset(key, "state", "delivered" if result and result.ok else "failed")
                else:
                    pipe.zadd(self.keys.webhooks_due(), {delivery_id: time.time() + delay})
                await pipe.execute()
            outcome = "delivered" if result is not None and result.ok else ("retry" if delay is not None else "failed")
            WEBHOOKS.labels(event, outcome, attempt_label(attempt)).inc()
            if result is not None:
                WEBHOOK_DURATION.observe(result.duration_ms / 1000)
            if result is not None and result.ok:
                log.info("webhook delivered", extra={"status_code": result.status_code, "ms": result.duration_ms})
            else:
                log.warning(
                    "webhook attempt failed",
                    extra={"error": entry["error"], "status_code": entry["status_code"], "retry_in": delay},
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
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
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


def serve(settings: Settings) -> None:
    """Entry point of `sdserve webhooks`."""
    configure_logging(settings.log_level, process="webhooks")

    async def main() -> None:
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        sync = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        await asyncio.to_thread(warn_about_redis, sync, "webhooks")
        keys = Keys(settings.key_prefix)
        janitor = Janitor(
            sync, keys, max_attempts=settings.max_attempts, queue_key=lambda model: rq_queue(sync, keys, model).key
        )
        store = LocalStore(settings.objects_dir, settings.signing_key())
        dispatcher = Dispatcher(settings, client, store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, dispatcher.stopping.set)
        serve_metrics(settings.dispatcher_metrics_port, "webhooks")
        log.info("webhook dispatcher ready")

        async def sweep() -> None:  # recovery of jobs whose worker died must not need a live worker
            while not dispatcher.stopping.is_set():
                try:
                    await asyncio.to_thread(janitor.sweep)
                except redis.exceptions.RedisError as exc:
                    log.warning("janitor: redis unavailable (%s)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dispatcher.stopping.wait(), timeout=10)

        sweeper = asyncio.create_task(sweep())
        try:
            await dispatcher.run()
        finally:
            await sweeper
            await client.aclose()
            sync.close()
        log.info("webhook dispatcher stopped")

    asyncio.run(main())
