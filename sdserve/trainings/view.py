"""Trainings as the API shows them (``Training``), as webhooks carry them, and what a worker records.

A running training's record holds, in ``progress`` (rewritten at every report, fenced by its run): the latest
loss and learning rate, speed, the loss curve so far (at most ``MAX_CURVE_POINTS`` points, thinned evenly),
the step it resumed from, and the validation images made so far. A succeeded one's ``result`` names the
adapter file, the training manifest beside it, the whole loss curve and every validation image.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from sdserve.contract.lifecycle import JobStatus
from sdserve.jobs.record import JobError
from sdserve.trainings.requests import Method, TrainingRequest

MAX_CURVE_POINTS = 200
"""Most points of the loss curve a training's view carries (the manifest has every logged one)."""

AdapterKind = Literal["lora", "embedding"]


class LossPoint(BaseModel):
    """The mean loss over the steps since the previous point."""

    step: int = Field(ge=0)
    loss: float
    learning_rate: float


class StoredValidationImage(BaseModel):
    """A validation image as the worker records it."""

    prompt: str
    seed: int
    key: str


class StoredValidation(BaseModel):
    """The validation images rendered at one step."""

    step: int
    images: list[StoredValidationImage]


class TrainingFacts(BaseModel):
    """What a running training reports beside its step (the record's ``progress``)."""

    loss: float | None = None
    learning_rate: float | None = None
    steps_per_second: float | None = None
    elapsed_seconds: float | None = None
    resumed_from_step: int | None = None
    checkpoint_step: int | None = None
    curve: list[LossPoint] = Field(default_factory=list)
    validations: list[StoredValidation] = Field(default_factory=list)


class StoredAdapter(BaseModel):
    """The trained file as the worker records it."""

    kind: AdapterKind
    name: str
    key: str
    sha256: str
    bytes: int
    token: str | None = None
    trigger_words: list[str] = Field(default_factory=list)


class TrainingResult(BaseModel):
    """What a succeeded training's record holds in ``result``."""

    adapter: StoredAdapter
    manifest_key: str
    curve: list[LossPoint] = Field(default_factory=list)
    validations: list[StoredValidation] = Field(default_factory=list)
    steps: int
    resumed_from_step: int | None = None
    train_seconds: float


class TrainingProgress(BaseModel):
    """How far a training has come."""

    step: int = Field(ge=0, description="Optimisation steps done.")
    total: int = Field(ge=0, description="Steps in all.")
    fraction: float = Field(ge=0.0, le=1.0, description="step / total.")
    loss: float | None = Field(default=None, description="Mean loss over the latest logged steps.")
    learning_rate: float | None = Field(default=None, description="The learning rate at the latest step.")
    elapsed_seconds: float | None = Field(default=None, description="Training time of this run so far.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds to the last step.")
    resumed_from_step: int | None = Field(
        default=None, description="The checkpoint's step this run resumed from (after a worker was lost)."
    )


class ValidationImage(BaseModel):
    """One validation image."""

    prompt: str
    seed: int
    url: str = Field(description="Signed, expiring URL of the PNG.")


class ValidationRound(BaseModel):
    """The validation images rendered at one step (the same prompts and seeds every round)."""

    step: int
    images: list[ValidationImage]


class Adapter(BaseModel):
    """The trained LoRA or embedding: use it by name (a LoRA in `loras`, an embedding by its token)."""

    kind: AdapterKind
    name: str
    token: str | None = Field(default=None, description="An embedding's token: write it in prompts.")
    trigger_words: list[str] = Field(default_factory=list, description="Words that call up what a LoRA learned.")
    url: str = Field(description="Signed, expiring URL of the .safetensors file.")
    sha256: str
    bytes: int


class Training(BaseModel):
    """A training as the API shows it."""

    id: str
    object: Literal["training"] = "training"
    status: JobStatus
    method: Method
    base_model: str
    name: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    progress: TrainingProgress | None = None
    request: TrainingRequest = Field(description="The request with every default resolved.")
    adapter: Adapter | None = Field(default=None, description="The result, once the training succeeded.")
    manifest_url: str | None = Field(
        default=None, description="The training manifest (dataset hash, hyperparameters, versions, loss curve)."
    )
    loss_curve: list[LossPoint] = Field(default_factory=list, description="The loss curve so far (thinned).")
    validation: list[ValidationRound] = Field(default_factory=list, description="Validation images so far.")
    error: JobError | None = None
    cancel_requested: bool = False
    purged: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)


class TrainingPayload(BaseModel):
    """A training webhook: `training.started`, `training.progress`, `training.succeeded`, ..."""

    type: str = Field(description="`training.<event>`.")
    timestamp: datetime
    data: Training


def thin(curve: list[LossPoint], most: int = MAX_CURVE_POINTS) -> list[LossPoint]:
    """At most ``most`` points of a curve, evenly spread, always keeping the last."""
    if len(curve) <= most:
        return list(curve)
    stride = len(curve) / most
    picked = [curve[int(i * stride)] for i in range(most - 1)]
    return [*picked, curve[-1]]
