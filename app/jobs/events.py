"""Reading a job's event stream (Redis Streams): the history a client can replay, and following it to its end.

Every status change and progress step of a job is appended to its stream in the same atomic step that
changes the record (``sdserve.jobs.scripts``). Stream ids double as SSE event ids, so ``Last-Event-ID``
resumes exactly where a client left off. SSE and ``Prefer: wait`` both follow a stream with ``follow``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from sdserve.contract.lifecycle import JobEvent
from sdserve.replies import text

BLOCK_SECONDS = 0.5
"""Longest blocking read of a stream (a third of the gateway's default Redis socket timeout)."""


@dataclass(frozen=True)
class Event:
    """One entry of a job's stream."""

    id: str
    name: JobEvent
    data: dict[str, Any]


def decode_entry(entry_id: Any, fields: Mapping[Any, Any]) -> Event:
    """Decode one XRANGE / XREAD entry."""
    f = {text(k): text(v) for k, v in fields.items()}
    return Event(id=text(entry_id), name=JobEvent(f["event"]), data=json.loads(f.get("data") or "{}"))


async def read_events(
    client: aioredis.Redis, stream: str, *, after: str = "0", block_ms: int | None = None, count: int = 500
) -> list[Event]:
    """Events after ``after`` (exclusive); with ``block_ms``, wait up to that long for the first one.

    Ids are Redis stream ids (``<ms>-<seq>``), so resuming from a ``Last-Event-ID`` loses nothing and repeats
    nothing.
    """
    if block_ms is None:
        start = "(" + after if after != "0" else "-"
        entries: Any = await client.xrange(stream, min=start, max="+", count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]
    answer: Any = await client.xread({stream: after}, count=count, block=block_ms)
    events: list[Event] = []
    for _, stream_entries in answer or []:
        events.extend(decode_entry(entry_id, fields) for entry_id, fields in stream_entries)
    return events


def valid_event_id(value: str) -> bool:
    """Whether a Last-Event-ID has the shape of a stream id."""
    head, _, tail = value.partition("-")
    return head.isdigit() and tail.isdigit() and len(value) < 40


async def follow(
    client: aioredis.Redis,
    stream: str,
    *,
    after: str = "0",
    deadline: float | None = None,
    ended: Any = None,
) -> AsyncIterator[Event]:
    """The events after ``after``, then new ones as they happen, until the terminal event (or ``deadline``,
    a ``time.monotonic()`` value).

    ``ended`` (an async callable) says whether the job has ended: a stream that has gone quiet is checked
    against it, so a job whose stream was trimmed or expired does not hold a follower forever.
    """
    while deadline is None or time.monotonic() < deadline:
        events = await read_events(client, stream, after=after)
        if not events:
            # Blocking reads stay well inside the client's socket timeout, even on a busy machine.
            wait = BLOCK_SECONDS if deadline is None else max(0.001, min(BLOCK_SECONDS, deadline - time.monotonic()))
            events = await read_events(client, stream, after=after, block_ms=max(1, int(wait * 1000)))
        if not events and ended is not None and await ended():
            events = await read_events(client, stream, after=after)  # the end may have just landed
            if not events:
                return
        for event in events:
            after = event.id
            yield event
            if event.name.is_terminal:
                return
