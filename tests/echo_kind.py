"""A kind of work that exists only in the tests: ``echo`` repeats a text, one step at a time.

It is declared the way every kind is (its request, its queue, its runner, its result, its problem type), in
this file alone: the engine (``sdserve.jobs``, ``app.jobs``, ``worker.engine``) was not changed for it, and the
import contracts keep the engine from knowing it exists. ``tests/integration/test_engine_kinds.py`` shows that
it gets every engine feature: records, queues, events, webhooks, listing, idempotency, cancel, delete,
recovery and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from app.deps import Caller, CallerDep, StateDep
from app.jobs.accept import IdempotencyKey, Prefer, accept
from app.jobs.queue import NewJob
from app.state import GatewayState
from sdserve.contract.lifecycle import JobEvent, JobStatus
from sdserve.contract.problems import ON_JOB, JobFailed, problem
from sdserve.contract.requests import Metadata, Strict, WebhookSpec
from sdserve.jobs.kind import JobKind
from sdserve.jobs.record import JobError, JobRecord
from sdserve.jobs.tracker import JobTracker
from sdserve.jobs.view import Progress, ViewContext, common
from sdserve.registry import Registry
from worker.engine.kind import Claimed, QueueRef
from worker.engine.progress import Reporter

QUEUE = "echo"

ECHO_REFUSED = problem(
    "echo-refused", ON_JOB, "The echo was refused", "Set on a failed echo: its request asked it to fail."
)


class EchoRefused(JobFailed):
    problem = ECHO_REFUSED


class EchoRequest(Strict):
    """Repeat ``text`` ``repeat`` times, in ``steps`` steps of ``pause_ms`` each."""

    text: str = Field(min_length=1, max_length=200)
    repeat: int = Field(default=1, ge=1, le=5)
    steps: int = Field(default=3, ge=1, le=50)
    pause_ms: int = Field(default=0, ge=0, le=5000)
    fail_at: int | None = Field(default=None, ge=1, le=50, description="Fail with echo-refused at this step.")
    webhook: WebhookSpec | None = None
    metadata: Metadata


class Echo(BaseModel):
    """An echo job as the API shows it."""

    id: str
    object: Literal["echo"] = "echo"
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    progress: Progress | None = None
    echoed: int = Field(default=0, description="Steps echoed so far (the kind's own progress fact).")
    request: EchoRequest
    text: str | None = None
    text_url: str | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    purged: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)


class EchoPayload(BaseModel):
    type: str
    timestamp: datetime
    data: Echo


class EchoKind(JobKind):
    name: ClassVar[str] = "echo"
    collection: ClassVar[str] = "echoes"
    noun: ClassVar[str] = "echo"
    title: ClassVar[str] = "Echo"
    view_model = Echo
    webhook_model = EchoPayload

    def queues(self, registry: Registry) -> dict[str, str]:
        return {QUEUE: ""}

    def view(self, record: JobRecord, ctx: ViewContext) -> Echo:
        return Echo(
            **common(self.collection, record, ctx),
            echoed=int(record.progress.get("echoed", 0)),
            request=EchoRequest.model_validate(record.request),
            text=record.result.get("text"),
            text_url=ctx.url(record.result.get("key")),
        )

    def webhook(self, record: JobRecord, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> EchoPayload:
        return EchoPayload(type=f"echo.{event.value}", timestamp=datetime.now(UTC), data=self.view(record, ctx))


ECHO = EchoKind()


class EchoGatewayKind:
    kind = ECHO

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1", tags=["echoes"])

        @router.post("/echoes", status_code=status.HTTP_202_ACCEPTED, response_model=Echo, operation_id="createEcho")
        async def create(
            body: EchoRequest,
            response: Response,
            state: StateDep,
            caller: CallerDep,
            idempotency_key: IdempotencyKey = None,
            prefer: Prefer = None,
        ) -> Any:
            return await accept(state, self, body, caller, response, idempotency_key=idempotency_key, prefer=prefer)

        return router

    def queue_of(self, body: Any, state: GatewayState) -> str:
        return QUEUE

    async def prepare(self, body: Any, state: GatewayState, caller: Caller, job_id: str) -> NewJob:
        request: EchoRequest = body
        return NewJob(
            job_id=job_id, kind=ECHO.name, task="echo", queue=QUEUE, request=request.model_dump(mode="json"),
            total=request.steps, timeout=60, metadata=request.metadata, webhook=request.webhook,
        )  # fmt: skip


ECHO_GATEWAY = EchoGatewayKind()


class EchoRunner:
    kind = ECHO.name

    def __init__(self, tracker: JobTracker) -> None:
        self.tracker = tracker
        self.ran: list[str] = []

    def queues(self) -> list[QueueRef]:
        return [QueueRef(QUEUE)]

    def collect(self, job_id: str, queue: str) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        return {}

    def run(self, jobs: list[Claimed]) -> dict[str, dict[str, Any]]:
        job = jobs[0]
        request = EchoRequest.model_validate(job.record.request)
        self.ran.append(job.id)
        reporter = Reporter(self.tracker, jobs, request.steps)
        for step in range(1, request.steps + 1):
            time.sleep(request.pause_ms / 1000)
            if request.fail_at == step:
                raise EchoRefused(f"asked to fail at step {step}")
            reporter.report(step, [{"step": step, "total": request.steps, "line": request.text}], {"echoed": step})
        text = " ".join([request.text] * request.repeat)
        key = job.artifacts.put("echo.txt", text.encode(), "text/plain")
        return {job.id: {"text": text, "key": key}}
