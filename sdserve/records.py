"""The job record: one Redis hash per job, written by the gateway and the worker.

The record is the source of truth for a job's status and results (RQ's own job hash expires on
its own schedule and is not reported). Field values are strings; structured ones are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdserve.jobs import JobError, JobStatus


@dataclass(frozen=True)
class StoredImage:
    """One output image as recorded by the worker: where it lies, not how to reach it."""

    index: int
    key: str
    seed: int
    width: int
    height: int
    content_type: str

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
        }


@dataclass(frozen=True)
class JobRecord:
    """A decoded job hash."""

    id: str
    task: str
    model: str
    status: JobStatus
    request: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    attempts: int = 0
    worker: str | None = None
    images: list[StoredImage] = field(default_factory=list)
    manifest_key: str | None = None
    error: JobError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    request_id: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    mask_key: str | None = None
    webhook_url: str | None = None
    webhook_events: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    purged: bool = False
    traceparent: str | None = None

    @staticmethod
    def new_fields(
        *,
        job_id: str,
        task: str,
        model: str,
        request: Mapping[str, Any],
        created_at: float,
        total: int,
        metadata: Mapping[str, str],
        owner: str | None,
        request_id: str | None,
        inputs: Mapping[str, str] | None = None,
        webhook: tuple[str, list[str]] | None = None,
        traceparent: str | None = None,
    ) -> dict[str, str]:
        """The hash fields of a freshly accepted job."""
        fields = {
            "id": job_id,
            "task": task,
            "model": model,
            "status": JobStatus.QUEUED.value,
            "request": json.dumps(request, separators=(",", ":")),
            "created_at": repr(created_at),
            "step": "0",
            "total": str(total),
            "attempts": "0",
            "metadata": json.dumps(dict(metadata), separators=(",", ":")),
        }
        if inputs:
            fields["inputs"] = json.dumps(dict(inputs), separators=(",", ":"))
        if webhook is not None:
            fields["webhook_url"], fields["webhook_events"] = webhook[0], ",".join(webhook[1])
        if owner:
            fields["owner"] = owner
        if traceparent:
            fields["traceparent"] = traceparent
        if request_id:
            fields["request_id"] = request_id
        return fields

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> JobRecord:
        """Decode HGETALL output (bytes or str keys and values)."""
        h = {_text(k): _text(v) for k, v in raw.items()}

        def opt_float(name: str) -> float | None:
            value = h.get(name)
            return float(value) if value else None

        error = json.loads(h["error"]) if h.get("error") else None
        return cls(
            id=h["id"],
            task=h["task"],
            model=h["model"],
            status=JobStatus(h["status"]),
            request=json.loads(h["request"]),
            created_at=float(h["created_at"]),
            started_at=opt_float("started_at"),
            finished_at=opt_float("finished_at"),
            step=int(h.get("step") or 0),
            total=int(h.get("total") or 0),
            attempts=int(h.get("attempts") or 0),
            worker=h.get("worker") or None,
            images=[StoredImage(**img) for img in json.loads(h.get("images") or "[]")],
            manifest_key=h.get("manifest") or None,
            error=JobError.model_validate(error) if error else None,
            timings=json.loads(h.get("timings") or "{}"),
            metadata=json.loads(h.get("metadata") or "{}"),
            owner=h.get("owner") or None,
            request_id=h.get("request_id") or None,
            inputs=json.loads(h.get("inputs") or "{}"),
            mask_key=h.get("mask") or None,
            webhook_url=h.get("webhook_url") or None,
            webhook_events=[e for e in (h.get("webhook_events") or "").split(",") if e],
            cancel_requested=h.get("cancel_requested") == "1",
            purged=h.get("purged") == "1",
            traceparent=h.get("traceparent") or None,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
