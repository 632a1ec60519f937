"""Worker presence: what each live worker serves, written by the worker, read by the gateway and the janitor.

A worker's presence is one JSON value (``WorkerPresence``) that expires four heartbeats plus ten seconds
after its last beat: Redis's own clock decides when a worker is gone, whatever the clocks of the machines
say. The ``workers`` set lists the names to look at; names whose presence has expired are dropped by readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.keys import Keys
from sdserve.replies import text

ADVERTISE = """
-- KEYS[1] the presence key, KEYS[2] the workers set, KEYS[3] the served-queues set. ARGV[1] the presence
-- JSON, ARGV[2] its TTL, ARGV[3] the worker's name, then the queues it serves.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
for i = 4, #ARGV do redis.call('ZADD', KEYS[3], now, ARGV[i]) end
return 1
"""


def presence_ttl(heartbeat_seconds: float) -> int:
    """How long a presence outlives its last heartbeat: four beats and ten seconds."""
    return int(heartbeat_seconds * 4) + 10


class WorkerPresence(BaseModel):
    """What one live worker serves, and its state."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    queues: list[str] = Field(description="Engine queues it takes jobs from.")
    models: list[str] = Field(default_factory=list, description="Registry models it serves.")
    resident: list[str] = Field(default_factory=list, description="Models loaded now.")
    kinds: list[str] = Field(default_factory=list, description="Kinds of work it runs.")
    device: str = ""
    ready: bool = False
    busy: bool = False
    heartbeat_seconds: float = 5.0
    metrics_port: int | None = None


def advertise(client: redis.Redis, keys: Keys, presence: WorkerPresence, script: Any = None) -> None:
    """Publish a worker's presence (and that it serves its queues), on Redis's clock."""
    run = script or client.register_script(ADVERTISE)
    run(
        keys=[keys.worker(presence.name), keys.workers(), keys.served_queues()],
        args=[presence.model_dump_json(), presence_ttl(presence.heartbeat_seconds), presence.name, *presence.queues],
    )


def retire(client: redis.Redis, keys: Keys, name: str) -> None:
    """Remove a worker's presence (clean shutdown)."""
    with client.pipeline() as pipe:
        pipe.delete(keys.worker(name))
        pipe.zrem(keys.workers(), name)
        pipe.execute()


def parse(values: Sequence[Any], names: Sequence[str]) -> tuple[dict[str, WorkerPresence], list[str]]:
    """Presences from MGET replies; and the names whose presence has expired (or is unreadable)."""
    live: dict[str, WorkerPresence] = {}
    gone: list[str] = []
    for name, value in zip(names, values, strict=True):
        if value is None:
            gone.append(name)
            continue
        try:
            live[name] = WorkerPresence.model_validate_json(text(value))
        except ValidationError:
            gone.append(name)
    return live, gone


def live_workers(client: redis.Redis, keys: Keys) -> dict[str, WorkerPresence]:
    """Every worker whose presence has not expired (sync; the janitor and `sdserve up` use it)."""
    names = [text(n) for n in client.zrange(keys.workers(), 0, -1)]
    if not names:
        return {}
    live, gone = parse(client.mget([keys.worker(n) for n in names]), names)
    if gone:
        client.zrem(keys.workers(), *gone)
    return live


def is_alive(client: redis.Redis, keys: Keys, name: str) -> bool:
    """Whether a worker's presence has not expired."""
    return bool(client.exists(keys.worker(name)))
