"""The job record: one Redis hash per job, of any kind; the source of truth for its status and results.

``JobRecord`` is a typed model over the hash. Scalars are stored as text, structured fields (the request,
the result, timings, ...) as JSON; ``to_fields`` and ``from_hash`` are the only codec, driven by the model's
own field types, and the Lua scripts write fields encoded by ``encode_fields``. RQ's own job hash expires on
RQ's schedule and is never reported.

The engine knows nothing of what a kind puts in ``request``, ``result`` or ``progress``: the kind's own models
read them.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdserve.contract.lifecycle import JobStatus
from sdserve.replies import text

ANONYMOUS = "anonymous"
"""The owner of jobs created without an API key."""


class JobError(BaseModel):
    """Why a job failed (or was canceled), as an RFC 9457 problem."""

    type: str
    title: str
    detail: str | None = None


class JobRecord(BaseModel):
    """A decoded job hash."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    kind: str = Field(description="The kind of work (``image``, ...): which kind's models read request and result.")
    task: str = Field(description="What the kind calls this job's operation (``txt2img``, ...).")
    model: str = Field(default="", description="The registry model it runs on (for listing filters and metrics).")
    queue: str = Field(description="The engine queue it waits in (the model's queue for image jobs).")
    status: JobStatus
    owner: str = ANONYMOUS
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    progress: dict[str, Any] = Field(default_factory=dict, description="The kind's extra progress facts (loss, ...).")
    attempts: int = Field(default=0, description="Runs started so far; the current run's fencing token.")
    worker: str | None = None
    result: dict[str, Any] = Field(default_factory=dict, description="The kind's result (object keys, values).")
    error: JobError | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="Input name → object key the worker reads.")
    input_ids: list[str] = Field(default_factory=list, description="Upload ids the job uses (unusable once deleted).")
    webhook_url: str | None = None
    webhook_events: list[str] = Field(default_factory=list)
    cancel_requested: bool = False
    purged: bool = False
    traceparent: str | None = None
    request_id: str | None = None
    timeout: int = 0
    redeliveries: int = 0


def _is_structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_structured(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin in (dict, list):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


STRUCTURED = frozenset(name for name, f in JobRecord.model_fields.items() if _is_structured(f.annotation))
"""Fields stored as JSON (the rest are text)."""


def encode_value(name: str, value: Any) -> str:
    """One field as the hash stores it."""
    if name in STRUCTURED:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_none=True)
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode_fields(**fields: Any) -> dict[str, str]:
    """Fields of a record, encoded for HSET (unknown names are refused: the record has a schema)."""
    unknown = set(fields) - set(JobRecord.model_fields)
    if unknown:
        raise ValueError(f"not job record fields: {sorted(unknown)}")
    return {name: encode_value(name, value) for name, value in fields.items() if value is not None}


def to_fields(record: JobRecord) -> dict[str, str]:
    """The whole record as hash fields (fields that are None are not stored)."""
    return {name: encode_value(name, getattr(record, name)) for name in JobRecord.model_fields
            if getattr(record, name) is not None}  # fmt: skip


def from_hash(raw: Mapping[Any, Any]) -> JobRecord:
    """Decode HGETALL output (bytes or text keys and values)."""
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        name, value_text = text(key), text(value)
        if name not in JobRecord.model_fields or value_text == "":
            continue
        fields[name] = json.loads(value_text) if name in STRUCTURED else value_text
    return JobRecord.model_validate(fields)
