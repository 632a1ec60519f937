"""Request fields every kind of work shares: the webhook to call and the caller's own metadata."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from sdserve.contract.lifecycle import TERMINAL_EVENTS, JobEvent
from sdserve.contract.limits import MAX_METADATA_KEY_CHARS, MAX_METADATA_KEYS, MAX_METADATA_VALUE_CHARS


class Strict(BaseModel):
    """A request part that refuses unknown fields (a misspelt option is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


class WebhookSpec(Strict):
    """Where to POST signed job events (Standard Webhooks)."""

    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://", description="Callback URL, http(s) only.")
    events: list[JobEvent] = Field(
        default_factory=lambda: list(TERMINAL_EVENTS),
        min_length=1,
        max_length=5,
        description="Events to deliver (`started`, `progress`, `succeeded`, `failed`, `canceled`); default: the "
        "terminal ones. `queued` is not delivered (the 202 answer is that event).",
    )

    @field_validator("events")
    @classmethod
    def _deliverable(cls, events: list[JobEvent]) -> list[JobEvent]:
        if any(not event.deliverable for event in events):
            raise ValueError("`queued` is not delivered by webhook: the 202 answer is that event")
        if len(set(events)) != len(events):
            raise ValueError("each event may be listed once")
        return events


Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)],
        Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)],
    ],
    Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description="Your own key/value pairs, echoed back on the job and its webhooks.",
    ),
]
