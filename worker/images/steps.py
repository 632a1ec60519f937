"""Per-step progress of image jobs, through diffusers' ``callback_on_step_end``.

One callback serves one pipeline call: a single job, or every job of a batch (each with the index of its
first image in the batch, for its preview). Each step goes to the engine's ``Reporter`` (one Redis round
trip for every job of the call), which stops the call when no job wants it any more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from worker.engine.kind import Claimed
from worker.engine.progress import Reporter
from worker.images.previews import preview_data_uri


@dataclass(frozen=True)
class Member:
    """A job of a pipeline call, and where its images start in the batch."""

    job: Claimed
    first_image: int = 0


class StepCallback:
    """Report every denoising step of one pipeline call, every ``preview_every`` steps with a preview.

    A progress event is appended at most every ``event_interval`` seconds (and always for the last step),
    which keeps event streams short on fast GPUs without hiding progress on slow ones.
    """

    def __init__(
        self,
        reporter: Reporter,
        members: list[Member],
        *,
        preview_every: int = 0,
        family: str = "sd1",
        event_interval: float = 0.0,
    ) -> None:
        self.reporter = reporter
        self.members = members
        self.preview_every = preview_every
        self.family = family
        self.event_interval = event_interval
        self._last_event = 0.0

    @property
    def total(self) -> int:
        return self.reporter.total

    def report(self, step: int, latents: Any = None) -> None:
        """Record that ``step`` steps are done; raises JobCanceled / JobStopped when no job goes on."""
        live_ids = {job.id for job in self.reporter.live()}
        live = [m for m in self.members if m.job.id in live_ids]
        events: list[dict[str, Any] | None] = [None] * len(live)
        now = time.monotonic()
        total = self.reporter.total
        if step >= total or now - self._last_event >= self.event_interval:
            self._last_event = now
            preview = self.preview_every and latents is not None and step % self.preview_every == 0
            for i, member in enumerate(live):
                event: dict[str, Any] = {"step": step, "total": total, "fraction": round(step / max(total, 1), 4)}
                if preview and step < total:
                    event["preview"] = preview_data_uri(latents[member.first_image :], self.family)
                events[i] = event
        self.reporter.report(step, events)

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # The pipeline knows the true count: image tasks run steps × strength of them, and second-order
        # schedulers (heun) evaluate the model twice per step.
        total = getattr(pipe, "_num_timesteps", None)
        if isinstance(total, int) and total > 0:
            self.reporter.total = total
        self.report(step_index + 1, callback_kwargs.get("latents"))
        return callback_kwargs
