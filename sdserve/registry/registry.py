"""What can be asked for: models (and their defaults), LoRAs, embeddings and style presets.

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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.contract.limits import NAME_PATTERN, SCHEDULER_NAMES
from sdserve.contract.problems import InvalidRequest, UnknownName
from sdserve.registry.builtin import BUILTIN_EMBEDDINGS, BUILTIN_LORAS, BUILTIN_MODELS
from sdserve.registry.specs import EmbeddingSpec, LoraSpec, ModelSpec
from sdserve.registry.styles import BUILTIN_STYLES, StylePreset


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
    def load(cls, path: Path | None, default_model: str) -> Registry:
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
        bad = [n for n in styles if not re.fullmatch(NAME_PATTERN, n)]
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
        """Every scheduler name sdserve knows (each model offers those in its ``schedulers``)."""
        return SCHEDULER_NAMES

    def schedulers_for(self, model: ModelSpec) -> list[str]:
        """The schedulers offered for a model, in the order sdserve lists them."""
        return [name for name in SCHEDULER_NAMES if name in model.schedulers]
