"""Webhook deliveries as records: one hash per delivery, and a log of every attempt per job.

Deliveries are created by the job scripts (``sdserve.jobs.scripts``: the same step that changes the job) and
by a redelivery request; the dispatcher (``dispatcher``) sends them and appends each attempt to the job's
delivery log, which the gateway shows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdserve.replies import text


class DeliveryRecord(BaseModel):
    """One pending (or finished) delivery of one event of one job."""

    model_config = ConfigDict(extra="ignore")

    id: str
    job: str
    event: str
    webhook_id: str
    attempt: int = 0
    created_at: float = 0.0
    data: str = "{}"
    state: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> DeliveryRecord:
        return cls.model_validate({text(k): text(v) for k, v in raw.items()})


class Delivery(BaseModel):
    """One attempt to deliver a webhook (an entry of the job's delivery log)."""

    webhook_id: str = Field(description="The `webhook-id` header sent (the same for every retry of one event).")
    event: str
    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(description="Why the attempt failed, if it did.")
    duration_ms: float
    ok: bool
    next_attempt_in: float | None = Field(
        default=None, description="Seconds until the next retry; null when this was the last attempt."
    )
