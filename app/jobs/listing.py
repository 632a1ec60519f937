"""Listing a caller's jobs of one kind: newest first, filtered, with opaque cursors.

Each caller has an index per kind (a sorted set of job ids by creation time, on Redis's clock). A page walks
that index from the cursor down, reads the records in batches, keeps those that pass the filters, and stops
at ``limit`` or after scanning a bounded number of entries (so a rare filter cannot make one request
expensive); the returned cursor continues exactly where the scan stopped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.problems import FieldError, InvalidRequest
from sdserve.jobs.record import JobRecord, from_hash
from sdserve.keys import Keys
from sdserve.replies import text

SCAN_LIMIT = 2000
"""Most index entries one page may read."""
BATCH = 100


@dataclass(frozen=True)
class Page:
    """One page of jobs and where the next one starts."""

    records: list[JobRecord]
    next_cursor: str | None


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split("|", 1)
        return float(score), job_id
    except (ValueError, UnicodeDecodeError):
        problem = FieldError("query.cursor", "not a cursor from this API")
        raise InvalidRequest("invalid cursor", errors=[problem]) from None


async def list_jobs(
    client: Any,
    keys: Keys,
    kind: str,
    owner: str,
    *,
    status: JobStatus | None = None,
    model: str | None = None,
    created_after: float | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page:
    """A page of a caller's jobs of one kind, newest first."""
    index = keys.index(kind, owner)
    high: Any = "+inf"
    skip_id: str | None = None
    if cursor is not None:
        score, skip_id = decode_cursor(cursor)
        high = score
    # Times are shown to the microsecond: compare at that precision, so a job's own `created_at` sent back
    # as `created_after` leaves that job out whichever way its float was rounded for display.
    after_us = round(created_after * 1e6) if created_after is not None else None
    low: Any = created_after - 1e-6 if created_after is not None else "-inf"
    found: list[JobRecord] = []
    scanned = 0
    offset = 0
    last: tuple[float, str] | None = None
    expired: list[str] = []
    while len(found) < limit and scanned < SCAN_LIMIT:
        entries = await client.zrevrangebyscore(index, high, low, start=offset, num=BATCH, withscores=True)
        if not entries:
            last = None
            break
        offset += len(entries)
        ids = [(text(e[0]), float(e[1])) for e in entries]
        if skip_id is not None:
            # Entries at the cursor's exact score come in a fixed order: skip up to and including it.
            position = next((i for i, (jid, _) in enumerate(ids) if jid == skip_id), None)
            if position is not None:
                ids = ids[position + 1 :]
            skip_id = None
        async with client.pipeline(transaction=False) as pipe:
            for job_id, _ in ids:
                pipe.hgetall(keys.job(job_id))
            raws = await pipe.execute()
        for (job_id, score), raw in zip(ids, raws, strict=True):
            scanned += 1
            last = (score, job_id)
            if not raw:
                expired.append(job_id)  # the record expired: drop it from the index after the scan
                continue
            record = from_hash(raw)
            if status is not None and record.status is not status:
                continue
            if model is not None and record.model != model:
                continue
            if after_us is not None and round(record.created_at * 1e6) <= after_us:
                continue
            found.append(record)
            if len(found) == limit:
                break
    if expired:
        await client.zrem(index, *expired)
    return Page(found, encode_cursor(*last) if last is not None else None)
