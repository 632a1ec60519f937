"""The function every RQ job names (``worker.engine.slot.run_job``), and the process's engine slot.

RQ calls jobs by dotted path, so the gateway can enqueue without importing torch. The worker itself runs jobs
through ``SdWorker.execute_job`` (which calls the engine directly); this entry point is what RQ's own tools
(``rq`` CLI, a plain RQ worker pointed at the queue) would run, and runs the job the same way.
"""

from __future__ import annotations

from worker.engine.runner import Engine

_engine: Engine | None = None


def install(engine: Engine | None) -> None:
    """Make ``engine`` the one this process's jobs run on (None removes it)."""
    global _engine  # noqa: PLW0603 - the process-wide slot RQ's dotted-path calls need
    _engine = engine


def current() -> Engine:
    """The installed engine; a job reaching a process without one is a deployment error."""
    if _engine is None:
        raise RuntimeError("no sdserve worker engine in this process: start it with `sdserve worker`")
    return _engine


def run_job(job_id: str) -> str:
    """Run one sdserve job by id (RQ's entry point); its outcome."""
    return current().execute([job_id])[job_id]
