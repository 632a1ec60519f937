"""The worker's side of a job record: start, progress, finish (sync redis-py).

Each call is one atomic Lua script (``sdserve.transitions``) that updates the record and appends
the matching event, and refuses to touch a job that has already ended.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis

from sdserve import transitions
from sdserve.events import encode_data
from sdserve.jobs import JobError, JobStatus
from sdserve.keys import Keys
from sdserve.records import JobRecord, StoredImage

log = logging.getLogger(__name__)
T = TypeVar("T")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def retrying(call: Callable[[], T], *, seconds: float = 120.0) -> T:
    """Run a Redis call, riding out an outage of up to ``seconds`` (Redis restarting, failing over)."""
    deadline = time.monotonic() + seconds
    pause = 0.25
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("redis unavailable (%s); retrying in %.1fs", exc.__class__.__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class JobTracker:
    """Record a running job's life in Redis.

    Starting and ending a job ride out a Redis outage (they retry for up to two minutes): a job that
    ran must not lose its outcome to a Redis restart.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._start = client.register_script(transitions.START)
        self._progress = client.register_script(transitions.PROGRESS)
        self._finish = client.register_script(transitions.FINISH)

    def _keys(self, job_id: str) -> list[str]:
        return [self.keys.job(job_id), self.keys.events(job_id), self.keys.webhooks_due()]

    def _head(self) -> list[str]:
        return [repr(time.time()), self.keys.delivery_prefix()]

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if it has expired or never existed."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        return JobRecord.from_hash(raw) if raw else None

    def start(self, job_id: str, worker: str, attempt_data: Mapping[str, Any] | None = None) -> str:
        """Mark a job running. Returns 'ok', 'cancel', or the status that forbids starting it."""
        data = encode_data({"status": "running", "worker": worker, **(attempt_data or {})})
        return _text(retrying(lambda: self._start(keys=self._keys(job_id), args=[*self._head(), worker, data])))

    def progress(self, job_id: str, step: int, total: int, event: Mapping[str, Any] | None) -> str:
        """Record a step; with ``event``, also append a progress event.

        Returns 'ok' to go on; anything else ('cancel', 'canceled', ...) means stop.
        """
        data = encode_data(event) if event is not None else ""
        return _text(self._progress(keys=self._keys(job_id), args=[*self._head(), step, total, data]))

    def progress_many(
        self, job_ids: Sequence[str], step: int, total: int, events: Sequence[Mapping[str, Any] | None]
    ) -> list[str]:
        """``progress`` for the jobs of one batch, in one round trip; one state per job."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, event in zip(job_ids, events, strict=True):
                data = encode_data(event) if event is not None else ""
                self._progress(keys=self._keys(job_id), args=[*self._head(), step, total, data], client=pipe)
            return [_text(state) for state in pipe.execute()]

    def _end(self, job_id: str, status: JobStatus, event: Mapping[str, Any], fields: Mapping[str, str]) -> str:
        args: list[str] = [*self._head(), status.value, encode_data(event)]
        for name, value in fields.items():
            args += [name, value]
        return _text(retrying(lambda: self._finish(keys=self._keys(job_id), args=args)))

    def succeed(
        self,
        job_id: str,
        *,
        images: Sequence[StoredImage],
        manifest_key: str,
        timings: Mapping[str, float],
        total: int,
        mask_key: str | None = None,
    ) -> str:
        """Mark a job succeeded with its outputs.

        Returns 'ok'; 'cancel' if a cancel was asked for meanwhile (the caller then cancels the job and
        drops its outputs); or the terminal status the job already had.
        """
        fields = {
            "images": json.dumps([img.to_json() for img in images], separators=(",", ":")),
            "manifest": manifest_key,
            "timings": json.dumps(dict(timings), separators=(",", ":")),
            "step": str(total),
            "total": str(total),
        }
        if mask_key:
            fields["mask"] = mask_key
        return self._end(job_id, JobStatus.SUCCEEDED, {"status": "succeeded"}, fields)

    def fail(self, job_id: str, error: JobError, timings: Mapping[str, float]) -> bool:
        """Mark a job failed with a problem; False if it had already ended."""
        return self._fail(job_id, error, timings) == "ok"

    def _fail(self, job_id: str, error: JobError, timings: Mapping[str, float]) -> str:
        problem = error.model_dump(mode="json", exclude_none=True)
        return self._end(
            job_id,
            JobStatus.FAILED,
            {"status": "failed", "error": problem},
            {"error": json.dumps(problem), "timings": json.dumps(dict(timings))},
        )

    def cancel(self, job_id: str, timings: Mapping[str, float] | None = None) -> bool:
        """Mark a job canceled; False if it had already ended."""
        fields = {"timings": json.dumps(dict(timings or {}))}
        return self._end(job_id, JobStatus.CANCELED, {"status": "canceled"}, fields) == "ok"
