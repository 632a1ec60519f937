"""The function every RQ job names (``worker.jobs.run_job``), and the process's runtime slot.

RQ calls jobs by dotted path, so the gateway can enqueue without importing torch. The function
needs the worker's warm state; ``install`` puts it in place once, when the worker has warmed up.
"""

from __future__ import annotations

from typing import Any

from worker.runtime import Runtime

_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one this process's jobs run on (None removes it)."""
    global _runtime  # noqa: PLW0603 - the process-wide slot RQ's dotted-path calls need
    _runtime = runtime


def current() -> Runtime:
    """The installed runtime; a job reaching a process without one is a deployment error."""
    if _runtime is None:
        raise RuntimeError("no sdserve worker runtime in this process: start it with `sdserve worker`")
    return _runtime


def run_job(job_id: str) -> dict[str, Any]:
    """Run one sdserve job by id (RQ's entry point)."""
    return current().execute(job_id)
