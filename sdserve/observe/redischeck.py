"""What a process checks about the Redis it got, at start: settings that can lose accepted jobs.

Job records, queues and events live in Redis, so a Redis without append-only persistence loses them in
a restart, and one with an eviction policy drops them under memory pressure. sdserve does not refuse
to run on such a Redis (development setups often are), but says so loudly, once per process.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

log = logging.getLogger("sdserve.redis")


def redis_warnings(client: redis.Redis) -> list[str]:
    """Unsafe settings of a Redis, in words (empty when it is fit for production)."""
    problems: list[str] = []
    try:
        version = str(client.info("server").get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2]) < (6, 2):
            problems.append(f"Redis {version} is older than 6.2: workers cannot pop jobs reliably (BLMOVE)")
        config: dict[Any, Any] = {}
        for name in ("appendonly", "maxmemory", "maxmemory-policy"):
            config.update(client.config_get(name))
    except redis.ResponseError as exc:  # managed services often refuse CONFIG
        return [f"could not read the Redis configuration ({exc}); make sure it persists (AOF) and never evicts"]
    if str(config.get("appendonly", "no")).lower() != "yes":
        problems.append("append-only persistence is off (appendonly no): a Redis restart loses accepted jobs")
    policy = str(config.get("maxmemory-policy", "noeviction"))
    if str(config.get("maxmemory", "0")) != "0" and policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy}: under memory pressure Redis will evict job records")
    return problems


def warn_about_redis(client: redis.Redis, process: str) -> list[str]:
    """Log each unsafe setting as a warning; jobs are serialised as JSON (never pickle) regardless."""
    try:
        problems = redis_warnings(client)
    except redis.RedisError as exc:
        log.warning("could not check Redis at start: %s", exc)
        return []
    for problem in problems:
        log.warning("UNSAFE REDIS for %s: %s", process, problem, extra={"check": "redis"})
    return problems
