"""A kind of work as the worker sees it: the queues it serves, and the recipe that runs a claimed job.

The engine (``worker.engine.runner``) claims jobs, hands them to their kind's ``Runner``, and ends them:
success with the result the runner returns, or the problem its exception names. A runner reports progress
and learns of cancellation through ``Reporter`` (``worker.engine.progress``) and writes its outputs through
each job's ``Artifacts`` (``worker.engine.artifacts``), which keep every run's files apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdserve.jobs.record import JobRecord
from sdserve.jobs.tracker import Attempt
from worker.engine.artifacts import Artifacts


@dataclass(frozen=True)
class QueueRef:
    """A queue a runner takes jobs from; lower ``priority`` first, then the oldest job across them."""

    name: str
    priority: int = 0


@dataclass
class Claimed:
    """A job this worker started: its run (the fencing token), where its outputs go, its timing sheet."""

    attempt: Attempt
    artifacts: Artifacts
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    ended: str | None = None
    """Set when the job was ended during the call (``canceled`` in a batch) by this worker."""

    @property
    def record(self) -> JobRecord:
        return self.attempt.record

    @property
    def id(self) -> str:
        return self.attempt.job_id


class Runner(Protocol):
    """What a kind of work brings to the worker."""

    kind: str

    def queues(self) -> list[QueueRef]:
        """The queues this worker takes the kind's jobs from."""

    def collect(self, job_id: str, queue: str) -> list[str]:
        """Compatible queued jobs to run with ``job_id`` (claimed from ``queue``), often none."""

    def run(self, jobs: list[Claimed]) -> dict[str, dict[str, Any]]:
        """Run the jobs (one, or a batch ``collect`` made): each live job's result (its record's ``result``).

        A job missing from the answer was stopped during the run (canceled, or superseded). Raising ends every
        job of the call with the exception's problem (``sdserve.contract.problems``).
        """

    def describe(self) -> dict[str, Any]:
        """What the worker's presence says about this kind (models served, resident, ...)."""
