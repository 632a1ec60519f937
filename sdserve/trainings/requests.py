"""What a training asks for: a method, a base model, a dataset, a trigger word, hyperparameters, validation.

Every bound is in the schema. Defaults that depend on the method and the model family (rank, learning rate,
steps, resolution...) are left ``null`` here and resolved at submit (``defaults``), so the stored request says
exactly what ran. The defaults follow diffusers' example training scripts; ``docs/training.md`` lists them.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sdserve.contract.limits import MAX_PROMPT_CHARS, MAX_SEED, UPLOAD_ID_PATTERN, Name
from sdserve.contract.requests import Metadata, Strict, WebhookSpec

Method = Literal["lora", "textual_inversion"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]

MAX_TRAINING_STEPS = 10_000
"""Most optimisation steps one training may take."""
MAX_DATASET_IMAGES = 200
"""Most images in one training's dataset."""
MIN_DATASET_IMAGES = 1
"""Fewest images in one training's dataset."""
MIN_TRAINING_IMAGE_SIDE = 64
"""Smallest width or height of a dataset image (it is cropped to the training resolution)."""
MAX_CAPTION_CHARS = 1000
"""Longest caption of a dataset image."""
MAX_VALIDATION_PROMPTS = 4
"""Most validation prompts one training renders at each validation."""
MAX_TRIGGER_CHARS = 64
"""Longest trigger word."""
EMBEDDING_TOKEN_PATTERN = r"^<[a-z0-9][a-z0-9._-]{0,62}>$"  # noqa: S105 (a pattern, not a secret)
"""The shape of a textual-inversion token (the trigger word of a ``textual_inversion`` training)."""


class DatasetImage(Strict):
    """One image of an inline dataset: an upload id and its caption."""

    image: str = Field(pattern=UPLOAD_ID_PATTERN, description="An image upload (`POST /v1/uploads`).")
    caption: str | None = Field(
        default=None, max_length=MAX_CAPTION_CHARS, description="Its caption; null: the caption template."
    )


class DatasetImages(Strict):
    """A dataset given as image uploads with captions."""

    images: list[DatasetImage] = Field(min_length=MIN_DATASET_IMAGES, max_length=MAX_DATASET_IMAGES)


class Hyperparameters(Strict):
    """How to train; null fields take the defaults of the method and the model family (``docs/training.md``)."""

    steps: int | None = Field(default=None, ge=1, le=MAX_TRAINING_STEPS, description="Optimisation steps.")
    learning_rate: float | None = Field(default=None, gt=0.0, le=1e-2, description="Peak learning rate (AdamW).")
    lr_scheduler: LrScheduler = Field(default="constant_with_warmup", description="Learning-rate schedule.")
    warmup_steps: int | None = Field(default=None, ge=0, le=MAX_TRAINING_STEPS, description="Linear warm-up.")
    batch_size: int | None = Field(default=None, ge=1, le=64, description="Images per optimisation step.")
    rank: int | None = Field(default=None, ge=1, le=128, description="LoRA rank (LoRA only).")
    alpha: float | None = Field(
        default=None, gt=0.0, le=256.0, description="LoRA alpha (LoRA only; default: the rank, so scale 1)."
    )
    resolution: int | None = Field(
        default=None, ge=64, le=2048, multiple_of=8, description="Training side in pixels (default: the model's)."
    )
    center_crop: bool = Field(
        default=True, description="Crop each image's centre square; false: a random square crop each step."
    )
    random_flip: bool = Field(default=True, description="Flip images left-right at random.")
    min_snr_gamma: float | None = Field(
        default=5.0, ge=0.0, le=20.0, description="Min-SNR loss weighting (Hang et al. 2023); null: off."
    )
    noise_offset: float = Field(default=0.0, ge=0.0, le=0.5, description="Offset noise.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed of the whole run (default: random).")
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRAINING_STEPS,
        description="Steps between checkpoints (default: a tenth of the steps, at least 25).",
    )


class Validation(Strict):
    """Prompts rendered every ``every`` steps (and at the end), with the same seeds each time."""

    prompts: list[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] = Field(
        min_length=1, max_length=MAX_VALIDATION_PROMPTS
    )
    every: int | None = Field(
        default=None, ge=1, le=MAX_TRAINING_STEPS, description="Steps between validations (default: at the end)."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Prompt i uses seed + i, at every validation.")
    steps: int | None = Field(default=None, ge=1, le=50, description="Denoising steps (default: the model's).")
    guidance: float | None = Field(default=None, ge=0.0, le=30.0, description="Guidance (default: the model's).")


def visible(text: str) -> bool:
    """Whether a text has a character a tokenizer keeps (not only spaces, controls or zero-width marks)."""
    return any(not ch.isspace() and unicodedata.category(ch)[0] not in "CZ" for ch in text)


class TrainingRequest(Strict):
    """Train a LoRA or a textual-inversion embedding on your images."""

    method: Method = Field(description="`lora` or `textual_inversion`.")
    base_model: Name | None = Field(default=None, description="The model to train on (default: the default model).")
    name: Name = Field(description="The name of the result: use it in `loras` (a LoRA) once the training succeeds.")
    dataset: str | DatasetImages = Field(
        description="A dataset upload id (a zip sent to `POST /v1/uploads`: images, each with an optional "
        "same-name `.txt` caption), or a list of image upload ids with captions."
    )
    trigger_word: str = Field(
        min_length=1,
        max_length=MAX_TRIGGER_CHARS,
        description="A LoRA's trigger word, or the token of a textual-inversion embedding (`<like-this>`), "
        "which you then write in prompts.",
    )
    initializer_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TRIGGER_CHARS,
        description="Textual inversion: a word whose embedding starts the new token's (e.g. `blue`).",
    )
    caption_template: str = Field(
        default="a photo of [trigger]",
        min_length=1,
        max_length=MAX_CAPTION_CHARS,
        description="The caption of images that have none; `[trigger]` becomes the trigger word.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    validation: Validation | None = None
    webhook: WebhookSpec | None = None
    metadata: Metadata

    @field_validator("dataset")
    @classmethod
    def _dataset_id(cls, value: str | DatasetImages) -> str | DatasetImages:
        import re

        if isinstance(value, str) and not re.fullmatch(UPLOAD_ID_PATTERN, value):
            raise ValueError("a dataset upload id looks like upl_<32 hex digits>")
        return value

    @field_validator("trigger_word", "initializer_token")
    @classmethod
    def _tokenises(cls, value: str | None) -> str | None:
        if value is not None and not visible(value):
            raise ValueError("it tokenises to nothing (only spaces, control or invisible characters)")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _method_fields(self) -> TrainingRequest:
        import re

        if self.method == "textual_inversion":
            if not re.fullmatch(EMBEDDING_TOKEN_PATTERN, self.trigger_word):
                raise ValueError("a textual-inversion trigger_word is the new token, shaped like `<my-token>`")
            if self.initializer_token is None:
                raise ValueError("textual_inversion needs an initializer_token (a word close to the concept)")
            if self.hyperparameters.rank is not None or self.hyperparameters.alpha is not None:
                raise ValueError("rank and alpha are LoRA hyperparameters")
        elif self.initializer_token is not None:
            raise ValueError("initializer_token is for textual_inversion only")
        if "[trigger]" not in self.caption_template:
            raise ValueError("caption_template must contain the placeholder [trigger]")
        return self

    def caption_for(self, caption: str | None) -> str:
        """An image's caption, or the template's with the trigger word in it."""
        return caption if caption else self.caption_template.replace("[trigger]", self.trigger_word)
