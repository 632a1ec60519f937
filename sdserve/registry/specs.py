"""What the registry holds: models (with their defaults), LoRAs and textual-inversion embeddings."""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdserve.contract.limits import NAME_PATTERN, SchedulerName

Family = Literal["sd1", "sdxl"]


class ModelSpec(BaseModel):
    """One model the service can run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str = Field(
        description="`builtin:<name>`, a local diffusers folder, a single-file .safetensors checkpoint, "
        "or `hub:<repo id>` where the deployment has network access."
    )
    family: Family = "sd1"
    description: str = ""
    native_size: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    default_steps: int = Field(default=25, ge=1, le=150)
    default_guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    default_scheduler: SchedulerName = "euler"
    inpainting: bool = Field(default=False, description="A dedicated 9-channel inpainting checkpoint.")
    training_defaults: dict[str, dict[str, float | int | bool | str | None]] = Field(
        default_factory=dict,
        description="Training hyperparameter defaults of this model, per method (`lora`, `textual_inversion`), "
        "over the family's (see docs/training.md).",
    )
    schedulers: list[SchedulerName] = Field(
        default_factory=lambda: list(get_args(SchedulerName)),
        description="Schedulers offered for it: each must draw well at its default steps (leave out those that "
        "do not).",
    )

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("model", v)))

    @model_validator(mode="after")
    def _default_scheduler_offered(self) -> ModelSpec:
        if self.default_scheduler not in self.schedulers:
            raise ValueError(f"default_scheduler {self.default_scheduler!r} is not among its schedulers")
        return self


def _check_name(kind: str, value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"invalid {kind} name {value!r}")
    return value


STORE_FILE_PREFIX = "store:"
"""A ``file`` in the object store: ``store:<object key>`` (the adapters a training made)."""

_STORE_KEY = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors$")

SHA256_PATTERN = r"^[0-9a-f]{64}$"


def check_store_file(value: str) -> str:
    """A ``store:<object key>`` file: a .safetensors object whose key cannot climb out of the store."""
    key = value.removeprefix(STORE_FILE_PREFIX)
    if (
        not value.startswith(STORE_FILE_PREFIX)
        or len(key) > 512
        or not _STORE_KEY.fullmatch(key)
        or ".." in key.split("/")
    ):
        raise ValueError(f"invalid object store file {value!r}: `store:<key>` of a .safetensors object")
    return value


def _check_file(value: str) -> str:
    if value.startswith(STORE_FILE_PREFIX):
        return check_store_file(value)
    if not value.startswith("builtin:") and not value.endswith(".safetensors"):
        raise ValueError("adapters and embeddings are loaded from .safetensors files only")
    return value


_FILE = "Path of a .safetensors file, `builtin:<name>`, or `store:<object key>` (in the object store)."
_SHA256 = "SHA-256 of the file (hex): when set, a worker refuses a file that differs."


class _FitsFamily(BaseModel):
    """An adapter made for one model family (and optionally only some of its models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family = Field(description="The model family it was trained for.")
    base_models: list[str] = Field(
        default_factory=list, description="Models it fits (empty: every model of its family)."
    )

    def fits(self, model: ModelSpec) -> bool:
        """Whether it can be applied to a model."""
        return self.family == model.family and (not self.base_models or model.name in self.base_models)


class LoraSpec(_FitsFamily):
    """A LoRA adapter: a .safetensors file (diffusers/PEFT or kohya/A1111 key layout)."""

    name: str
    file: str = Field(description=_FILE)
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN, description=_SHA256)
    default_scale: float = Field(default=1.0, ge=-2.0, le=2.0)
    trigger_words: list[str] = Field(default_factory=list, description="Words that call up what it learned.")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("LoRA", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))


class EmbeddingSpec(_FitsFamily):
    """A textual-inversion embedding, used by writing its token in the prompt."""

    name: str
    file: str = Field(description=_FILE)
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN, description=_SHA256)
    token: str = Field(pattern=r"^<[a-z0-9][a-z0-9._-]{0,62}>$", description="Write this in a prompt to use it.")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("embedding", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))
