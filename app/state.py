"""What the gateway holds for its lifetime: built by ``create_app`` (``app.main``), read through ``app.deps``."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from app.access.idempotency import Idempotency
from app.access.ratelimit import RateLimiter
from app.jobs.queue import JobQueue
from app.uploads.store import Uploads
from sdserve.access.api_keys import KeyRing
from sdserve.jobs.kind import Kinds
from sdserve.observe.metrics import Metrics
from sdserve.registry import Registry, RegistryHolder
from sdserve.registry.owned import OwnedAdapters
from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore
from sdserve.webhooks.guard import WebhookPolicy


@dataclass
class GatewayState:
    """The gateway's long-lived services."""

    settings: Settings
    registry_holder: RegistryHolder
    redis: aioredis.Redis
    rq_connection: SyncRedis
    queue: JobQueue
    store: ObjectStore
    uploads: Uploads
    idempotency: Idempotency
    webhook_policy: WebhookPolicy
    keys: KeyRing
    rate_limiter: RateLimiter
    redeliver_limiter: RateLimiter
    metrics: Metrics
    kinds: Kinds
    owned: OwnedAdapters
    """The adapters each API key's trainings made (usable by that key only)."""

    @property
    def registry(self) -> Registry:
        """The registry now (a reload swaps it whole)."""
        return self.registry_holder.current

    async def close(self) -> None:
        await self.redis.aclose()
        self.rq_connection.close()
