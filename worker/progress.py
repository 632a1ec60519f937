"""Per-step progress and cancellation, through diffusers' ``callback_on_step_end``.

One reporter serves one pipeline call: a single job, or every job of a batch (each with the index of
its first image in the batch, for its preview). Every step updates each job's record in one Redis
round trip; a job whose cancel is seen is ended at once (a batch goes on for the others, and drops
that job's images); when no job of the call is left, the pipeline is stopped with ``JobCanceled``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from sdserve.errors import JobCanceled
from sdserve.tracker import JobTracker
from worker.previews import preview_data_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """A job in a pipeline call, and where its images start in the batch."""

    job_id: str
    first_image: int = 0


class StepReporter:
    """Write each step to the job records and stop the pipeline when no job wants it any more.

    A progress event is appended at most every ``event_interval`` seconds (and always for the last
    step), which keeps event streams short on fast GPUs without hiding progress on slow ones; every
    ``preview_every`` steps it carries a small preview decoded from the latents.
    """

    def __init__(
        self,
        tracker: JobTracker,
        job_id: str | list[Member],
        total: int,
        *,
        event_interval: float = 0.0,
        preview_every: int = 0,
        family: str = "sd1",
    ) -> None:
        self.tracker = tracker
        self.members = [Member(job_id)] if isinstance(job_id, str) else list(job_id)
        self.total = total
        self.event_interval = event_interval
        self.preview_every = preview_every
        self.family = family
        self._last_event = 0.0
        self.steps_done = 0
        self.stopped: set[str] = set()

    @property
    def job_id(self) -> str:
        return self.members[0].job_id

    def report(self, step: int, latents: Any = None) -> None:
        """Record that ``step`` steps are done; raises JobCanceled when no job of the call goes on."""
        self.steps_done = step
        live = [m for m in self.members if m.job_id not in self.stopped]
        now = time.monotonic()
        events: list[dict[str, Any] | None] = [None] * len(live)
        if step >= self.total or now - self._last_event >= self.event_interval:
            self._last_event = now
            preview = self.preview_every and latents is not None and step % self.preview_every == 0
            for i, member in enumerate(live):
                event: dict[str, Any] = {
                    "step": step,
                    "total": self.total,
                    "fraction": round(step / max(self.total, 1), 4),
                }
                if preview and step < self.total:
                    event["preview"] = preview_data_uri(latents[member.first_image :], self.family)
                events[i] = event
        try:
            states = self.tracker.progress_many([m.job_id for m in live], step, self.total, events)
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("redis unavailable: step %d not recorded (the job goes on)", step)
            return
        for member, state in zip(live, states, strict=True):
            if state != "ok":
                self.stopped.add(member.job_id)
                if len(self.members) > 1 and state == "cancel":
                    self.tracker.cancel(member.job_id)  # it ends now; the batch goes on for the others
        if len(self.stopped) == len(self.members):
            raise JobCanceled(f"job {self.job_id} stopped at step {step}")

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # The pipeline knows the true count: image tasks run steps × strength of them, and
        # second-order schedulers (heun) evaluate the model twice per step.
        total = getattr(pipe, "_num_timesteps", None)
        if isinstance(total, int) and total > 0:
            self.total = total
        self.report(step_index + 1, callback_kwargs.get("latents"))
        return callback_kwargs
