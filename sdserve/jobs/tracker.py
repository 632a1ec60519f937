"""The worker's side of a job record (sync redis-py): start a run, report its steps, end it.

``start`` turns a queued job into a running one and hands back an ``Attempt``: the run's fencing token.
Every later write of that run goes through it, and the scripts refuse it once the run is superseded (its
worker stalled and the janitor gave the job to another). Starting and ending ride out a Redis outage of up
to two minutes (redis-py's own retry with exponential backoff): a job that ran must not lose its outcome to
a Redis restart. Progress writes are not retried: a step lost to an outage is only a step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.problems import CANCELED, ProblemType
from sdserve.jobs import scripts
from sdserve.jobs.record import JobError, JobRecord, encode_fields, from_hash
from sdserve.keys import Keys
from sdserve.replies import UNAVAILABLE, text

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_RETRIES = 30
"""Retries of a start or an end through a Redis outage: 0.25 s doubling to 5 s apiece, about two minutes."""


def retrying(call: Callable[[], T], *, retries: int = OUTAGE_RETRIES) -> T:
    """Run a Redis call, riding out an outage (Redis restarting, failing over)."""

    def on_error(exc: Exception) -> None:
        log.warning("redis unavailable (%s); retrying", exc.__class__.__name__)

    policy = Retry(ExponentialBackoff(cap=5.0, base=0.25), retries, supported_errors=UNAVAILABLE)
    return policy.call_with_retry(call, on_error)


def patient_connection(url: str, **options: Any) -> redis.Redis:
    """A Redis connection for a worker: every command (RQ's bookkeeping included) rides out a full Redis
    (``maxmemory`` with ``noeviction``) and dropped connections for about two minutes, instead of raising.

    Retrying a refused command is safe: Redis refuses a command, a MULTI/EXEC transaction or a script over
    its maxmemory before it has any effect.
    """
    policy = Retry(ExponentialBackoff(cap=5.0, base=0.25), OUTAGE_RETRIES, supported_errors=UNAVAILABLE)
    return redis.Redis.from_url(url, retry=policy, retry_on_error=list(UNAVAILABLE), **options)


def problem_error(problem: ProblemType, detail: str | None) -> JobError:
    """The error a job records for a problem type of the catalogue."""
    return JobError(type=problem.type, title=problem.title, detail=detail)


def encode(data: Mapping[str, Any]) -> str:
    """Compact JSON for event data and script arguments."""
    return json.dumps(dict(data), separators=(",", ":"))


@dataclass(frozen=True)
class Attempt:
    """One run of a job, and its fencing token: every write of the run names it."""

    record: JobRecord
    number: int
    worker: str
    started_at: float = 0.0
    """When the run started, by Redis's clock (the clock ``created_at`` is on), Unix seconds."""

    @property
    def job_id(self) -> str:
        return self.record.id


class JobTracker:
    """Record jobs' runs in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, *, job_ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.job_ttl = job_ttl
        self._start = client.register_script(scripts.START)
        self._progress = client.register_script(scripts.PROGRESS)
        self._finish = client.register_script(scripts.FINISH)

    def _keys(self, record: JobRecord) -> list[str]:
        k = self.keys
        return [k.job(record.id), k.events(record.id), k.webhooks_due(), k.running(), k.active(record.owner)]

    def _head(self) -> list[str]:
        return [self.keys.delivery_prefix(), str(self.job_ttl)]

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if it has expired or never existed."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        return from_hash(raw) if raw else None

    def start(self, record: JobRecord, worker: str, data: Mapping[str, Any] | None = None) -> Attempt | str:
        """Start a run of a queued job; the Attempt, or why it cannot start ('canceled', 'paused', a status)."""
        k = self.keys
        keys = [
            *self._keys(record),
            k.claimed(record.queue),
            k.paused(),
            k.queue_key(record.queue),
            k.bell(record.queue),
        ]
        data_json = encode({"status": JobStatus.RUNNING.value, "worker": worker, **(data or {})})
        args = [
            *self._head(),
            worker,
            record.queue,
            data_json,
            problem_error(CANCELED, "canceled before it ran").model_dump_json(),
        ]
        reply = retrying(lambda: self._start(keys=keys, args=args))
        state = text(reply[0])
        if state != "ok":
            return state
        return Attempt(record=record, number=int(reply[1]), worker=worker, started_at=float(text(reply[2])))

    def progress(
        self,
        attempt: Attempt,
        step: int,
        total: int,
        event: Mapping[str, Any] | None,
        facts: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a step (with ``event``, also a progress event). 'ok' to go on; anything else means stop."""
        return self.progress_many([attempt], step, total, [event], facts)[0]

    def progress_many(
        self,
        attempts: Sequence[Attempt],
        step: int,
        total: int,
        events: Sequence[Mapping[str, Any] | None],
        facts: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """``progress`` for the jobs of one batch, in one round trip; one state per job."""
        facts_json = encode(facts) if facts else ""
        with self.redis.pipeline(transaction=False) as pipe:
            for attempt, event in zip(attempts, events, strict=True):
                args: list[str | int] = [
                    *self._head(),
                    attempt.number,
                    step,
                    total,
                    facts_json,
                    encode(event) if event else "",
                ]
                self._progress(keys=self._keys(attempt.record), args=args, client=pipe)
            return [text(state) for state in pipe.execute()]

    def finish(
        self,
        record: JobRecord,
        status: JobStatus,
        *,
        attempt: int | None,
        worker: str = "",
        event: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """End a job. Returns 'ok'; 'cancel' (a success met a cancel request); 'superseded'; or the status it had."""
        data = encode({"status": status.value, **(event or {})})
        args: list[str | int] = [*self._head(), "" if attempt is None else attempt, status.value, data, worker]
        for name, value in encode_fields(**fields).items():
            args += [name, value]
        return text(retrying(lambda: self._finish(keys=self._keys(record), args=args)))

    def succeed(self, attempt: Attempt, *, result: Mapping[str, Any], timings: Mapping[str, float], total: int) -> str:
        """Mark a run succeeded with its result, in the step that makes its outputs the job's."""
        return self.finish(
            attempt.record, JobStatus.SUCCEEDED, attempt=attempt.number, worker=attempt.worker,
            result=dict(result), timings=dict(timings), step=total, total=total,
        )  # fmt: skip

    def fail(self, attempt: Attempt, problem: ProblemType, detail: str | None, timings: Mapping[str, float]) -> str:
        """Mark a run failed with a problem of the catalogue."""
        error = problem_error(problem, detail)
        return self.finish(
            attempt.record, JobStatus.FAILED, attempt=attempt.number, worker=attempt.worker,
            event={"error": error.model_dump(mode="json", exclude_none=True)}, error=error, timings=dict(timings),
        )  # fmt: skip

    def cancel(self, attempt: Attempt, timings: Mapping[str, float] | None = None) -> str:
        """Mark a run canceled (its cancel request was seen)."""
        return self.finish(
            attempt.record, JobStatus.CANCELED, attempt=attempt.number, worker=attempt.worker,
            error=problem_error(CANCELED, "canceled while it ran"), timings=dict(timings or {}),
        )  # fmt: skip
