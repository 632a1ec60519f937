"""Per-step progress and cancellation, through diffusers' ``callback_on_step_end``."""

from __future__ import annotations

import time
from typing import Any

from sdserve.errors import JobCanceled
from sdserve.tracker import JobTracker
from worker.previews import preview_data_uri


class StepReporter:
    """Write each step to the job record and stop the pipeline when the job is canceled.

    Every step updates the record; a progress event is appended at most every
    ``event_interval`` seconds (and always for the last step), which keeps event streams short on
    fast GPUs without hiding progress on slow ones.
    """

    def __init__(
        self,
        tracker: JobTracker,
        job_id: str,
        total: int,
        *,
        event_interval: float = 0.0,
        preview_every: int = 0,
        family: str = "sd1",
    ) -> None:
        self.tracker = tracker
        self.job_id = job_id
        self.total = total
        self.event_interval = event_interval
        self.preview_every = preview_every
        self.family = family
        self._last_event = 0.0
        self.steps_done = 0

    def report(self, step: int, latents: Any = None) -> None:
        """Record that ``step`` steps are done; raises JobCanceled when the job must stop."""
        self.steps_done = step
        now = time.monotonic()
        event: dict[str, Any] | None = None
        if step >= self.total or now - self._last_event >= self.event_interval:
            self._last_event = now
            event = {"step": step, "total": self.total, "fraction": round(step / max(self.total, 1), 4)}
            if self.preview_every and latents is not None and step % self.preview_every == 0 and step < self.total:
                event["preview"] = preview_data_uri(latents, self.family)
        state = self.tracker.progress(self.job_id, step, self.total, event)
        if state != "ok":
            raise JobCanceled(f"job {self.job_id} stopped at step {step}: {state}")

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        # The pipeline knows the true count: image tasks run steps × strength of them, and
        # second-order schedulers (heun) evaluate the model twice per step.
        total = getattr(pipe, "_num_timesteps", None)
        if isinstance(total, int) and total > 0:
            self.total = total
        self.report(step_index + 1, callback_kwargs.get("latents"))
        return callback_kwargs
