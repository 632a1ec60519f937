"""What can be asked for: models (and their defaults) and style presets.

The registry is read from a TOML file when ``Settings.registry_file`` names one; the built-in
models are always there unless the file says ``include_builtin = false``. Names are validated
identifiers; a request only ever carries a name, and only the registry maps names to paths.

Example file::

    default_model = "sd15"

    [models.sd15]
    source = "/models/stable-diffusion-v1-5"   # a diffusers folder, a .safetensors file, or hub:<id>
    family = "sd1"
    native_size = 512

    [styles.noir]
    prompt = "{prompt}, film noir, high contrast black and white photograph"
    negative_prompt = "colour"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sdserve.errors import InvalidRequest, UnknownName
from sdserve.limits import SCHEDULER_NAMES, SchedulerName
from sdserve.styles import BUILTIN_STYLES, StylePreset

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

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

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"invalid model name {value!r}")
        return value


def _check_name(kind: str, value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"invalid {kind} name {value!r}")
    return value


def _check_file(value: str) -> str:
    if not value.startswith("builtin:") and not value.endswith(".safetensors"):
        raise ValueError("adapters and embeddings are loaded from .safetensors files only")
    return value


class LoraSpec(BaseModel):
    """A LoRA adapter: a .safetensors file (diffusers/PEFT or kohya/A1111 key layout)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    file: str = Field(description="Path of a .safetensors file, or `builtin:<name>`.")
    family: Family = Field(description="The model family the adapter was trained for.")
    base_models: list[str] = Field(
        default_factory=list, description="Models it fits (empty: every model of its family)."
    )
    default_scale: float = Field(default=1.0, ge=-2.0, le=2.0)
    trigger_words: list[str] = Field(default_factory=list, description="Words that call up what it learned.")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("LoRA", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))

    def fits(self, model: ModelSpec) -> bool:
        """Whether the adapter can be applied to a model."""
        return self.family == model.family and (not self.base_models or model.name in self.base_models)


class EmbeddingSpec(BaseModel):
    """A textual-inversion embedding, used by writing its token in the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    file: str = Field(description="Path of a .safetensors file, or `builtin:<name>`.")
    token: str = Field(pattern=r"^<[a-z0-9][a-z0-9._-]{0,62}>$", description="Write this in a prompt to use it.")
    family: Family
    base_models: list[str] = Field(default_factory=list, description="Models it fits (empty: the whole family).")
    description: str = ""

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name("embedding", v)))
    _file = field_validator("file")(classmethod(lambda cls, v: _check_file(v)))

    def fits(self, model: ModelSpec) -> bool:
        return self.family == model.family and (not self.base_models or model.name in self.base_models)


BUILTIN_LORAS: dict[str, LoraSpec] = {
    spec.name: spec
    for spec in (
        LoraSpec(
            name="tiny-detail",
            file="builtin:tiny-detail",
            family="sd1",
            base_models=["tiny"],
            default_scale=1.0,
            trigger_words=["detailed"],
            description="Demo LoRA for `tiny` (random weights, diffusers/PEFT layout): changes what tiny draws.",
        ),
        LoraSpec(
            name="tiny-kohya",
            file="builtin:tiny-kohya",
            family="sd1",
            base_models=["tiny"],
            default_scale=0.8,
            description="Demo LoRA for `tiny` in the kohya/A1111 key layout.",
        ),
        LoraSpec(
            name="tiny-sdxl-detail",
            file="builtin:tiny-sdxl-detail",
            family="sdxl",
            base_models=["tiny-sdxl"],
            default_scale=1.0,
            description="Demo LoRA for `tiny-sdxl` (random weights, diffusers/PEFT layout).",
        ),
        LoraSpec(
            name="demo-detail",
            file="builtin:demo-detail",
            family="sd1",
            base_models=["demo"],
            default_scale=0.5,
            description="Demo LoRA for `demo` (random weights, diffusers/PEFT layout): perturbs what demo draws, "
            "so a LoRA swap on the default model can be tried; it teaches no style.",
        ),
    )
}

BUILTIN_EMBEDDINGS: dict[str, EmbeddingSpec] = {
    "tiny-sparkle": EmbeddingSpec(
        name="tiny-sparkle",
        file="builtin:tiny-sparkle",
        token="<tiny-sparkle>",  # noqa: S106 - a prompt token, not a secret
        family="sd1",
        base_models=["tiny"],
        description="Demo textual-inversion embedding for `tiny`: write <tiny-sparkle> in the prompt.",
    )
}

BUILTIN_MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(
        name="tiny",
        source="builtin:tiny",
        family="sd1",
        description="Stable Diffusion 1.x architecture with small random weights, generated offline. "
        "Draws noise, fast: for tests and for trying the service without a GPU.",
        native_size=256,
        default_steps=20,
        default_guidance=7.0,
        default_scheduler="euler",
    ),
    "tiny-sdxl": ModelSpec(
        name="tiny-sdxl",
        source="builtin:tiny-sdxl",
        family="sdxl",
        description="Stable Diffusion XL architecture (two text encoders, size conditioning) with small random "
        "weights, generated offline. Draws noise, fast: for tests and for trying SDXL requests without a GPU.",
        native_size=256,
        default_steps=20,
        default_guidance=5.0,
        default_scheduler="euler",
    ),
    "demo": ModelSpec(
        name="demo",
        source="builtin:demo",
        family="sd1",
        description="A small Stable Diffusion 1.x model trained by sdserve on synthetic scenes: one or two "
        "coloured shapes (circle, square, triangle, star, ring, cross) on a plain or gradient background, "
        "e.g. 'a red circle on a blue background'. Shipped in the repository (fp16, 25 MB); about a second "
        "per 256x256 image on a CPU. See docs/demo-model.md.",
        native_size=256,
        default_steps=20,
        default_guidance=5.0,
        default_scheduler="euler",
    ),
}


class RegistryFile(BaseModel):
    """The TOML file's shape."""

    model_config = ConfigDict(extra="forbid")

    include_builtin: bool = True
    default_model: str | None = None
    models: dict[str, dict[str, object]] = Field(default_factory=dict)
    loras: dict[str, dict[str, object]] = Field(default_factory=dict)
    embeddings: dict[str, dict[str, object]] = Field(default_factory=dict)
    styles: dict[str, dict[str, object]] = Field(default_factory=dict)


class Registry:
    """Names → specs, read once per process (and again on an explicit reload)."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        styles: dict[str, StylePreset],
        default_model: str,
        loras: dict[str, LoraSpec] | None = None,
        embeddings: dict[str, EmbeddingSpec] | None = None,
    ) -> None:
        if default_model not in models:
            raise InvalidRequest(f"default model {default_model!r} is not in the registry")
        self.models = models
        self.styles = styles
        self.default_model = default_model
        self.loras = loras if loras is not None else dict(BUILTIN_LORAS)
        self.embeddings = embeddings if embeddings is not None else dict(BUILTIN_EMBEDDINGS)

    @classmethod
    def load(cls, path: Path | None, default_model: str = "tiny") -> Registry:
        """Read the registry file (if any) and merge it over the built-ins."""
        if path is None:
            return cls(dict(BUILTIN_MODELS), dict(BUILTIN_STYLES), default_model)
        try:
            raw = tomllib.loads(path.read_text())
            parsed = RegistryFile.model_validate(raw)
            builtin = parsed.include_builtin
            models = dict(BUILTIN_MODELS) if builtin else {}
            styles = dict(BUILTIN_STYLES) if builtin else {}
            loras = dict(BUILTIN_LORAS) if builtin else {}
            embeddings = dict(BUILTIN_EMBEDDINGS) if builtin else {}
            for name, fields in parsed.models.items():
                models[name] = ModelSpec.model_validate({**fields, "name": name})
            for name, fields in parsed.styles.items():
                styles[name] = StylePreset.model_validate({**fields, "name": name})
            for name, fields in parsed.loras.items():
                loras[name] = LoraSpec.model_validate({**fields, "name": name})
            for name, fields in parsed.embeddings.items():
                embeddings[name] = EmbeddingSpec.model_validate({**fields, "name": name})
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InvalidRequest(f"registry file {path}: {exc}") from exc
        bad = [n for n in styles if not NAME_PATTERN.fullmatch(n)]
        if bad:
            raise InvalidRequest(f"registry file {path}: invalid style names {bad}")
        tokens = [e.token for e in embeddings.values()]
        if len(tokens) != len(set(tokens)):
            raise InvalidRequest(f"registry file {path}: two embeddings share a token")
        return cls(models, styles, parsed.default_model or default_model, loras, embeddings)

    def model(self, name: str | None) -> ModelSpec:
        """The spec of a model by name (the default model for None)."""
        key = name or self.default_model
        try:
            return self.models[key]
        except KeyError:
            raise UnknownName(f"unknown model {key!r}; see GET /v1/models") from None

    def lora(self, name: str) -> LoraSpec:
        """A LoRA adapter by name."""
        try:
            return self.loras[name]
        except KeyError:
            raise UnknownName(f"unknown LoRA {name!r}; see GET /v1/loras") from None

    def embeddings_for(self, model: ModelSpec) -> list[EmbeddingSpec]:
        """The embeddings a model loads (their tokens work in its prompts)."""
        return [e for e in self.embeddings.values() if e.fits(model)]

    def style(self, name: str) -> StylePreset:
        """A style preset by name."""
        try:
            return self.styles[name]
        except KeyError:
            raise UnknownName(f"unknown style {name!r}; see GET /v1/styles") from None

    @staticmethod
    def schedulers() -> tuple[str, ...]:
        """Every scheduler name a request may use."""
        return SCHEDULER_NAMES
