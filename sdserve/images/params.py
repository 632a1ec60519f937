"""Request fields shared by every image task: prompts, size, sampling, LoRAs, style, output, webhook."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdserve.contract.limits import (
    MAX_IMAGES,
    MAX_LORAS,
    MAX_OWNED_EMBEDDINGS,
    MAX_PIXELS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    Name,
    SchedulerName,
)
from sdserve.contract.requests import Metadata, Strict, WebhookSpec
from sdserve.registry.specs import SHA256_PATTERN, check_store_file


class LoraRef(Strict):
    """One LoRA adapter to apply, by registry name."""

    name: Name = Field(description="LoRA name, as listed by `GET /v1/loras`.")
    scale: float | None = Field(
        strict=True, default=None, ge=-2.0, le=2.0, description="LoRA strength; default: the LoRA's own default."
    )


class OwnedAdapterRef(Strict):
    """One of the caller's own adapters a job uses, as the gateway resolved it (the worker loads exactly this)."""

    kind: Literal["lora", "embedding"]
    name: Name
    token: str | None = Field(default=None, description="An embedding's token (written in the prompt).")
    file: str = Field(description="Where its file lies (`store:<object key>`).")
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the file: the worker checks it.")

    _file = field_validator("file")(classmethod(lambda cls, v: check_store_file(v)))


class OutputOptions(Strict):
    """How result images are encoded."""

    format: Literal["png", "jpeg", "webp"] = Field(
        default="png", description="Image format. PNG carries the generation parameters in a text chunk."
    )
    quality: int = Field(strict=True, default=90, ge=1, le=100, description="JPEG/WEBP quality (ignored for PNG).")


class GenerationParams(Strict):
    """Fields common to every task."""

    model: Name | None = Field(
        default=None, description="Model name (see `GET /v1/models`); default: the service's default model."
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from.")
    width: int | None = Field(
        strict=True,
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=8,
        description=f"Image width in pixels, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. "
        "Default: the model's native size.",
    )
    height: int | None = Field(
        strict=True,
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=8,
        description=f"Image height in pixels, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. "
        "Default: the model's native size.",
    )
    num_images: int = Field(strict=True, default=1, ge=1, le=MAX_IMAGES, description="How many images to generate.")
    steps: int | None = Field(
        strict=True, default=None, ge=1, le=MAX_STEPS, description="Denoising steps; default: the model's default."
    )
    guidance_scale: float | None = Field(
        strict=True,
        default=None,
        ge=0.0,
        le=30.0,
        description="Classifier-free guidance; ≤ 1 turns it off. Default: model's.",
    )
    scheduler: SchedulerName | None = Field(default=None, description="Sampler; default: the model's default.")
    seed: int | None = Field(
        strict=True,
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first image; image i uses seed + i. Default: chosen at random and reported.",
    )
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS, description="LoRAs to apply.")
    owned_adapters: list[OwnedAdapterRef] = Field(
        default_factory=list,
        max_length=MAX_LORAS + MAX_OWNED_EMBEDDINGS,
        description="Set by the service: your own adapters (trained by your key) this job uses, LoRAs named in "
        "`loras` and embeddings whose tokens the prompts hold, with the file and SHA-256 that will run. Ignored "
        "in a request.",
        json_schema_extra={"readOnly": True},
    )
    style: Name | None = Field(default=None, description="Style preset (see `GET /v1/styles`).")
    output: OutputOptions = Field(default_factory=OutputOptions, description="Output encoding.")
    webhook: WebhookSpec | None = Field(default=None, description="Signed callback for job events.")
    metadata: Metadata

    @model_validator(mode="after")
    def _pixel_budget(self) -> GenerationParams:
        if self.width is not None and self.height is not None and self.width * self.height > MAX_PIXELS:
            raise ValueError(f"width × height must be at most {MAX_PIXELS:,} pixels")
        names = [lora.name for lora in self.loras]
        if len(names) != len(set(names)):
            raise ValueError("each LoRA may be listed once")
        return self
