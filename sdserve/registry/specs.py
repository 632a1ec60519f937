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


def _check_file(value: str) -> str:
    if not value.startswith("builtin:") and not value.endswith(".safetensors"):
        raise ValueError("adapters and embeddings are loaded from .safetensors files only")
    return value


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
    file: str = Field(description="Path of a .safetensors file, or `builtin:<name>`.")
    default_scale: float = Field(default=1.0, ge=-2.0, le=2.0)
    trigger_words: list[str] = Field(default_factory=list, description="Words that call up what it learned.")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("LoRA", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))


class EmbeddingSpec(_FitsFamily):
    """A textual-inversion embedding, used by writing its token in the prompt."""

    name: str
    file: str = Field(description="Path of a .safetensors file, or `builtin:<name>`.")
    token: str = Field(pattern=r"^<[a-z0-9][a-z0-9._-]{0,62}>$", description="Write this in a prompt to use it.")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("embedding", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))
