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


class StylePreset(BaseModel):
    """A named wrapper around the prompt and negative prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    prompt: str = Field(description="Template; `{prompt}` is replaced by the request's prompt.")
    negative_prompt: str = ""
    description: str = ""

    @field_validator("prompt")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("a style prompt must contain {prompt}")
        return value

    def apply(self, prompt: str, negative_prompt: str) -> tuple[str, str]:
        """Wrap a request's prompts in this style."""
        styled = self.prompt.replace("{prompt}", prompt)
        negative = ", ".join(part for part in (negative_prompt, self.negative_prompt) if part)
        return styled, negative


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
}

_NEG = "lowres, blurry, jpeg artifacts, watermark, text"
BUILTIN_STYLES: dict[str, StylePreset] = {
    s.name: s
    for s in (
        StylePreset(
            name="photographic",
            prompt="cinematic photo of {prompt}, 35mm photograph, film grain, bokeh, professional, highly detailed",
            negative_prompt=f"drawing, painting, anime, {_NEG}",
        ),
        StylePreset(
            name="cinematic",
            prompt="cinematic film still of {prompt}, shallow depth of field, vignette, highly detailed, moody, epic",
            negative_prompt=f"cartoon, painting, {_NEG}",
        ),
        StylePreset(
            name="anime",
            prompt="anime artwork of {prompt}, anime style, key visual, vibrant, studio anime, highly detailed",
            negative_prompt=f"photo, realistic, {_NEG}",
        ),
        StylePreset(
            name="digital-art",
            prompt="concept art of {prompt}, digital artwork, illustrative, painterly, matte painting, highly detailed",
            negative_prompt=f"photo, realistic, {_NEG}",
        ),
        StylePreset(
            name="pixel-art",
            prompt="pixel-art {prompt}, low-res, blocky, pixel art style, 8-bit graphics",
            negative_prompt=f"smooth, realistic, photographic, {_NEG}",
        ),
        StylePreset(
            name="comic-book",
            prompt="comic book panel of {prompt}, graphic illustration, comic art, bold lines, vibrant",
            negative_prompt=f"photograph, realistic, {_NEG}",
        ),
        StylePreset(
            name="fantasy-art",
            prompt="ethereal fantasy concept art of {prompt}, magnificent, celestial, painterly, epic",
            negative_prompt=f"photographic, realistic, {_NEG}",
        ),
        StylePreset(
            name="line-art",
            prompt="line art drawing of {prompt}, professional, sleek, modern, minimalist, graphic, vector",
            negative_prompt=f"photo, colorful, shading, {_NEG}",
        ),
        StylePreset(
            name="isometric",
            prompt="isometric style {prompt}, vibrant, beautiful, crisp, detailed, ultra detailed, intricate",
            negative_prompt=f"deformed, perspective, {_NEG}",
        ),
        StylePreset(
            name="watercolor",
            prompt="watercolor painting of {prompt}, vibrant, beautiful, painterly, detailed, textural, artistic",
            negative_prompt=f"photo, anime, {_NEG}",
        ),
        StylePreset(
            name="3d-model",
            prompt="professional 3d model of {prompt}, octane render, highly detailed, volumetric, dramatic lighting",
            negative_prompt=f"painting, sketch, {_NEG}",
        ),
        StylePreset(
            name="neon-punk",
            prompt="neonpunk style {prompt}, cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp",
            negative_prompt=f"painting, drawing, {_NEG}",
        ),
    )
}


class RegistryFile(BaseModel):
    """The TOML file's shape."""

    model_config = ConfigDict(extra="forbid")

    include_builtin: bool = True
    default_model: str | None = None
    models: dict[str, dict[str, object]] = Field(default_factory=dict)
    styles: dict[str, dict[str, object]] = Field(default_factory=dict)


class Registry:
    """Names → specs, read once per process (and again on an explicit reload)."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        styles: dict[str, StylePreset],
        default_model: str,
    ) -> None:
        if default_model not in models:
            raise InvalidRequest(f"default model {default_model!r} is not in the registry")
        self.models = models
        self.styles = styles
        self.default_model = default_model

    @classmethod
    def load(cls, path: Path | None, default_model: str = "tiny") -> Registry:
        """Read the registry file (if any) and merge it over the built-ins."""
        if path is None:
            return cls(dict(BUILTIN_MODELS), dict(BUILTIN_STYLES), default_model)
        try:
            raw = tomllib.loads(path.read_text())
            parsed = RegistryFile.model_validate(raw)
            models = dict(BUILTIN_MODELS) if parsed.include_builtin else {}
            styles = dict(BUILTIN_STYLES) if parsed.include_builtin else {}
            for name, fields in parsed.models.items():
                models[name] = ModelSpec.model_validate({**fields, "name": name})
            for name, fields in parsed.styles.items():
                styles[name] = StylePreset.model_validate({**fields, "name": name})
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InvalidRequest(f"registry file {path}: {exc}") from exc
        bad = [n for n in styles if not NAME_PATTERN.fullmatch(n)]
        if bad:
            raise InvalidRequest(f"registry file {path}: invalid style names {bad}")
        return cls(models, styles, parsed.default_model or default_model)

    def model(self, name: str | None) -> ModelSpec:
        """The spec of a model by name (the default model for None)."""
        key = name or self.default_model
        try:
            return self.models[key]
        except KeyError:
            raise UnknownName(f"unknown model {key!r}; see GET /v1/models") from None

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
