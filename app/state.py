"""What the gateway holds for its lifetime: built in the lifespan, read through ``app.deps``."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from sdserve.auth import KeyRing
from sdserve.deliveries import Deliveries
from sdserve.idempotency import Idempotency
from sdserve.queue import JobQueue
from sdserve.ratelimit import RateLimiter
from sdserve.registry import Registry
from sdserve.settings import Settings
from sdserve.store import ObjectStore
from sdserve.uploads import Uploads
from sdserve.webhooks import WebhookPolicy


@dataclass
class GatewayState:
    """The gateway's long-lived services."""

    settings: Settings
    registry: Registry
    redis: aioredis.Redis
    rq_connection: SyncRedis
    queue: JobQueue
    store: ObjectStore
    uploads: Uploads
    deliveries: Deliveries
    idempotency: Idempotency
    webhook_policy: WebhookPolicy
    keys: KeyRing
    rate_limiter: RateLimiter

    async def close(self) -> None:
        await self.redis.aclose()
        self.rq_connection.close()
