"""Per-job event streams (Redis Streams): the history a client can replay and follow.

Every status change and progress step of a job is appended to ``<prefix>:job:<id>:events`` in the
same atomic step that changes the record (see ``sdserve.transitions``). Stream ids double as SSE
event ids, so ``Last-Event-ID`` resumes exactly where a client left off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

STREAM_MAXLEN = 2000
"""Approximate cap on one job's stream (a 150-step job with previews stays far below it)."""


class EventName(StrEnum):
    """What happened to a job."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (EventName.SUCCEEDED, EventName.FAILED, EventName.CANCELED)


@dataclass(frozen=True)
class Event:
    """One entry of a job's stream."""

    id: str
    name: EventName
    data: dict[str, Any]


def encode_data(data: Mapping[str, Any]) -> str:
    """The compact JSON stored in a stream entry's ``data`` field."""
    return json.dumps(dict(data), separators=(",", ":"))


def decode_entry(entry_id: Any, fields: Mapping[Any, Any]) -> Event:
    """Decode one XRANGE / XREAD entry."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    return Event(id=_text(entry_id), name=EventName(f["event"]), data=json.loads(f.get("data") or "{}"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_events(
    client: Any, stream: str, *, after: str = "0", block_ms: int | None = None, count: int = 500
) -> list[Event]:
    """Events after ``after`` (exclusive); with ``block_ms``, wait up to that long for the first one.

    ``client`` is a ``redis.asyncio.Redis``. Ids are Redis stream ids (``<ms>-<seq>``), so resuming
    from a ``Last-Event-ID`` loses nothing and repeats nothing.
    """
    if block_ms is None:
        start = "(" + after if after != "0" else "-"
        entries = await client.xrange(stream, min=start, max="+", count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]
    answer = await client.xread({stream: after}, count=count, block=block_ms)
    events: list[Event] = []
    for _, entries in answer or []:
        events.extend(decode_entry(entry_id, fields) for entry_id, fields in entries)
    return events


def valid_event_id(value: str) -> bool:
    """Whether a Last-Event-ID has the shape of a stream id."""
    head, _, tail = value.partition("-")
    return head.isdigit() and tail.isdigit() and len(value) < 40
