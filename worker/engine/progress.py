"""Progress and cancellation of the jobs of one call, whatever their kind.

Every report writes each live job's step in one Redis round trip (fenced by its attempt) and reads back what
each job's record says: go on; ``cancel`` (the job is ended as canceled at once, and in a batch the call goes
on for the others); or that the job is no longer this run's (``superseded``, or ended elsewhere: failed by
the janitor's timeout, expired), in which case it is dropped without touching its record. When no job of the
call is left, the report raises ``JobCanceled`` (every job was canceled) or ``JobStopped``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sdserve.contract.problems import JobCanceled, JobStopped
from sdserve.jobs.tracker import JobTracker
from sdserve.replies import UNAVAILABLE
from worker.engine.kind import Claimed

log = logging.getLogger(__name__)


class Reporter:
    """Write steps to the records of one call's jobs, and stop the call when no job wants it any more."""

    def __init__(self, tracker: JobTracker, jobs: Sequence[Claimed], total: int) -> None:
        self.tracker = tracker
        self.jobs = list(jobs)
        self.total = total
        self.canceled: set[str] = set()
        self.stopped: set[str] = set()

    def live(self) -> list[Claimed]:
        """The jobs still running in this call."""
        return [job for job in self.jobs if job.id not in self.canceled | self.stopped]

    def report(
        self,
        step: int,
        events: Sequence[Mapping[str, Any] | None] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``step`` of ``total`` steps are done (``events``: one per live job, or None).

        Raises JobCanceled or JobStopped when no job of the call goes on.
        """
        live = self.live()
        try:
            states = self.tracker.progress_many(
                [job.attempt for job in live], step, self.total, events or [None] * len(live), facts
            )
        except UNAVAILABLE:
            log.warning("redis unavailable: step %d not recorded (the job goes on)", step)
            return
        for job, state in zip(live, states, strict=True):
            if state == "ok":
                continue
            if state == "cancel":
                self.canceled.add(job.id)
                if len(self.jobs) > 1:  # it ends now; the batch goes on for the others
                    if self.tracker.cancel(job.attempt, job.timings) == "ok":
                        job.ended = "canceled"
                    job.artifacts.discard()
            else:
                self.stopped.add(job.id)
                log.warning("job %s stopped: %s", job.id, state, extra={"job_id": job.id, "state": state})
                job.artifacts.discard()
        if not self.live():
            if self.canceled and not self.stopped:
                raise JobCanceled(f"canceled at step {step}")
            raise JobStopped(f"no job of the call goes on after step {step}", reason="superseded or ended elsewhere")
