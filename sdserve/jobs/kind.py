"""A kind of work, as the engine sees it: a name, where its jobs live in the API, and how it shows them.

The engine (records, queues, events, webhooks, listing, idempotency, cancel, delete, recovery, metrics) knows
nothing about what a job computes. Each kind declares, in its own package:

* here (shared by the gateway and the webhook dispatcher): its name, its collection (``/v1/<collection>``),
  its request models, how a record is shown (``view``) and what a webhook carries (``webhook``), and its
  problem types (``sdserve.contract.problems.problem``);
* on the gateway (``app.jobs.kind.GatewayKind``): its create endpoints, and how a request is checked and
  resolved into a job (queue, totals, timeout, inputs);
* on the worker (``worker.engine.kind.Runner``): the queues it serves and the recipe that runs a job.

Image generation is the first kind (``sdserve.images``); a kind added later touches none of the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from sdserve.contract.lifecycle import JobEvent
from sdserve.jobs.record import JobRecord
from sdserve.jobs.view import ViewContext
from sdserve.registry import Registry


class JobKind(ABC):
    """One kind of work's declaration."""

    name: ClassVar[str]
    """What records carry in ``kind`` (``image``)."""
    collection: ClassVar[str]
    """The URL segment of its jobs: ``/v1/<collection>/{id}`` (``jobs`` for image jobs)."""
    noun: ClassVar[str]
    """What one job is called: the view's ``object`` and the webhook types' prefix (``job`` → ``job.succeeded``)."""
    title: ClassVar[str]
    """The noun capitalised, for operation ids and the docs (``Job`` → ``getJob``)."""
    view_model: ClassVar[type[BaseModel]]
    """The model ``view`` returns (the responses' schema)."""
    webhook_model: ClassVar[type[BaseModel]]
    """The model ``webhook`` returns (the webhook payload's schema)."""
    operation_ids: ClassVar[Mapping[str, str]] = {}
    """Operation ids that differ from the derived ones (``get<Title>``, ``list<Title>s``, ...)."""

    @abstractmethod
    def queues(self, registry: Registry) -> dict[str, str]:
        """Every queue the kind's jobs may wait in, and the model each serves (for metrics and operations)."""

    @abstractmethod
    def view(self, record: JobRecord, ctx: ViewContext) -> BaseModel:
        """The job as the API shows it."""

    @abstractmethod
    def webhook(self, record: JobRecord, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> BaseModel:
        """The body of one webhook delivery of this job (``data``: the event's own data)."""

    def event_data(self, event: JobEvent, data: Mapping[str, Any], ctx: ViewContext) -> dict[str, Any]:
        """An event's data as clients see it over SSE (a kind may sign the object keys its events name)."""
        return dict(data)

    def operation_id(self, action: str) -> str:
        """The operation id of one of the engine's endpoints for this kind (``get``, ``list``, ``cancel``, ...)."""
        derived = {
            "list": f"list{self.title}s", "get": f"get{self.title}", "cancel": f"cancel{self.title}",
            "delete": f"delete{self.title}", "events": f"stream{self.title}Events",
            "deliveries": f"list{self.title}WebhookDeliveries", "redeliver": f"redeliver{self.title}Webhook",
        }  # fmt: skip
        return self.operation_ids.get(action, derived[action])


class Kinds:
    """The kinds a process knows, by name."""

    def __init__(self, kinds: Iterable[JobKind]) -> None:
        self.by_name: dict[str, JobKind] = {}
        for kind in kinds:
            if kind.name in self.by_name:
                raise ValueError(f"two kinds are named {kind.name!r}")
            self.by_name[kind.name] = kind

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self.by_name.values())

    def get(self, name: str) -> JobKind:
        """The kind of a record (a record of a kind this process does not know is a deployment error)."""
        try:
            return self.by_name[name]
        except KeyError:
            raise LookupError(f"this process knows no kind of work named {name!r}") from None
