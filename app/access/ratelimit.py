"""Per-key token buckets in Redis, taken atomically (one Lua script per request) on Redis's clock.

Every gateway takes from the same bucket at the same time (``TIME`` inside the script), so gateways whose
clocks disagree cannot refill a bucket faster than its rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdserve.keys import Keys

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of taking a token, and what the RateLimit headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """Token buckets: ``burst`` tokens, refilled at ``per_minute`` a minute."""

    def __init__(self, client: Any, keys: Keys, key: Callable[[str], str] | None = None) -> None:
        self.keys = keys
        self.key = key or keys.ratelimit
        self._take = client.register_script(_TAKE)

    async def take(self, owner: str, per_minute: int, burst: int) -> Decision:
        rate = per_minute / 60
        allowed, tokens, wait = await self._take(keys=[self.key(owner)], args=[repr(rate), burst])
        left = float(tokens)
        return Decision(
            allowed=bool(allowed),
            limit=burst,
            remaining=max(0, math.floor(left)),
            reset_seconds=math.ceil((burst - left) / rate),
            retry_after=max(1, math.ceil(float(wait))),
        )
