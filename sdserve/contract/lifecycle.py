"""The one vocabulary of a job's life: its status, and the events that move it.

``queued → running → succeeded | failed | canceled``; terminal states never change. Every event is named
here: the API reports ``status``, the event stream and webhooks carry ``event`` names, and the Lua scripts
that change a record get both from this module (``sdserve.jobs.scripts`` formats them in).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life: ``queued → running → succeeded | failed | canceled``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change again."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class JobEvent(StrEnum):
    """What happened to a job: one entry of its event stream, SSE event name and webhook event.

    ``queued`` (accepted, or requeued after its worker died), ``started`` (a worker took it: status
    ``running``), ``progress`` (a step), then the terminal event, named after the terminal status.
    """

    QUEUED = JobStatus.QUEUED.value
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = JobStatus.SUCCEEDED.value
    FAILED = JobStatus.FAILED.value
    CANCELED = JobStatus.CANCELED.value

    @property
    def is_terminal(self) -> bool:
        return self.value in TERMINAL

    @property
    def deliverable(self) -> bool:
        """Whether a webhook may subscribe to it (``queued`` is the 202 itself: not delivered)."""
        return self is not JobEvent.QUEUED

    @classmethod
    def ending(cls, status: JobStatus) -> JobEvent:
        """The terminal event of a terminal status."""
        if not status.is_terminal:
            raise ValueError(f"{status} is not terminal")
        return cls(status.value)


TERMINAL_EVENTS = [JobEvent.SUCCEEDED, JobEvent.FAILED, JobEvent.CANCELED]
"""What a webhook receives when it names no events."""
