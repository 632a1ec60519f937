"""Limits on creating work: the key's rate limit and active-job cap, and the queue's depth.

Each refusal is a problem with ``Retry-After`` (429 for the caller's own limits, 503 ``overloaded`` for a full
queue); every answer to an admitted request carries the ``RateLimit-*`` headers.
"""

from __future__ import annotations

from app.deps import Caller
from app.state import GatewayState
from sdserve.contract.problems import Overloaded, RateLimited


async def admit(state: GatewayState, caller: Caller, queue: str | None) -> None:
    """Take a token of the caller's rate limit; refuse when its active jobs or the queue are at their cap."""
    settings = state.settings
    key = caller.key
    if key is not None:
        per_minute = key.rate_per_minute or settings.rate_limit_per_minute
        burst = key.burst or settings.rate_limit_burst
        decision = await state.rate_limiter.take(key.name, per_minute, burst)
        caller.headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(
                f"rate limit: {per_minute} per minute, bursts of {burst}", retry_after=decision.retry_after
            )
        cap = key.max_active_jobs or settings.max_active_jobs_per_key
        if queue is not None and await state.queue.active_at_cap(key.name, cap):
            raise RateLimited(f"this key already has {cap} queued or running jobs; wait for some to end", retry_after=5)
    if queue is not None and await state.queue.queue_full(queue, settings.max_queue_depth):
        raise Overloaded(
            f"the queue {queue!r} is full ({settings.max_queue_depth} jobs waiting); retry later", retry_after=10
        )
