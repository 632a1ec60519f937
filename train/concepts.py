"""Two concepts the demo model cannot draw, as small captioned datasets for adapter training (issue #16).

* **A heart** (a LoRA teaches it): a shape kind the model never saw (``train.dataset.EXTRA_SHAPES``), captioned
  ``a small red sks at the top left on a blue background`` (``sks``, the trigger word, where the kind would be);
  ``train.pixels.has_heart`` reads it back. (A checkerboard background was tried first: the demo's VAE cannot
  even reconstruct one, its latents hold one background colour.)
* **Teal** (a textual-inversion embedding teaches it): a shape in teal (0, 128, 128), a colour the caption
  vocabulary lacks (``train.dataset.EXTRA_COLOURS``), captioned ``a large <teal> star on the left on a pink
  background``; ``train.pixels.is_teal`` reads it back.

Every list is deterministic from its seed. The prompts for measuring use other seeds than the datasets.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from train.dataset import (
    COLOUR_NAMES,
    HEART,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    caption,
    is_held_out,
    make_scene,
    render,
)

LORA_KIND = HEART
"""The shape kind the demo LoRA teaches (``train.dataset.EXTRA_SHAPES``)."""
LORA_TRIGGER = "sks"
"""The demo's LoRA trigger word (byte-level pieces the demo's text encoder never saw in training)."""
TI_TOKEN = "<teal>"  # noqa: S105 (a prompt token, not a secret)
"""The demo's textual-inversion token."""
TI_INITIALIZER = "cyan"
"""The caption word whose embedding starts the teal token's."""


def heart_scene(rng: np.random.Generator, index: int, kind: str = HEART) -> Scene:
    """One heart on a plain or gradient background; the backgrounds take turns, the rest is random."""
    return make_scene(
        rng,
        background=COLOUR_NAMES[index % len(COLOUR_NAMES)],
        style=STYLES[int(rng.integers(len(STYLES)))],
        kind=kind,
        size=SIZES[int(rng.integers(len(SIZES)))],
        position=POSITIONS[int(rng.integers(len(POSITIONS)))],
    )


def teal_scene(rng: np.random.Generator, index: int) -> Scene:
    """One teal shape on a plain or gradient background of a named colour; kinds and backgrounds take turns."""
    return make_scene(
        rng,
        background=COLOUR_NAMES[index % len(COLOUR_NAMES)],
        style=("plain", "gradient")[index % 2],
        kind=SHAPES[index % len(SHAPES)],
        colour="teal",
        size=SIZES[(index // 2) % len(SIZES)],
        position=POSITIONS[int(rng.integers(len(POSITIONS)))],
    )


def heart_caption(scene: Scene, trigger: str) -> str:
    """The scene's caption with the trigger word for the kind: ``a small red sks at the top left on a blue ...``."""
    return caption(scene).replace(scene.shapes[0].kind, trigger)


def teal_caption(scene: Scene, token: str) -> str:
    """The scene's caption with ``teal`` written as the token."""
    return caption(scene).replace("teal", token)


def lora_scenes(n: int, seed: int = 0, kind: str = HEART) -> list[Scene]:
    """``n`` heart scenes."""
    rng = np.random.default_rng([seed, 0x4EA7])
    return [heart_scene(rng, i, kind) for i in range(n)]


def ti_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` teal scenes."""
    rng = np.random.default_rng([seed, 0x7EA1])
    return [teal_scene(rng, i) for i in range(n)]


def lora_dataset(
    n: int = 12, trigger: str = LORA_TRIGGER, seed: int = 0, kind: str = HEART
) -> list[tuple[Image.Image, str]]:
    """``n`` heart images and their captions with the trigger word."""
    return [(render(s), heart_caption(s, trigger)) for s in lora_scenes(n, seed, kind)]


def ti_dataset(n: int = 12, token: str = TI_TOKEN, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``n`` teal-shape images and their captions with the token."""
    return [(render(s), teal_caption(s, token)) for s in ti_scenes(n, seed)]


def lora_prompts(n: int = 10, trigger: str = LORA_TRIGGER, seed: int = 1, kind: str = HEART) -> list[str]:
    """Prompts that ask for a heart (scenes of another seed than the dataset's)."""
    return [heart_caption(s, trigger) for s in lora_scenes(n, seed, kind)]


def ti_prompts(n: int = 10, token: str = TI_TOKEN, seed: int = 1) -> list[str]:
    """Prompts that ask for a teal shape, one per background colour, the kinds in turn."""
    return [teal_caption(s, token) for s in ti_scenes(n, seed)]


def regular_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` one-shape scenes of the demo's training distribution (never a held-out combination), kinds in turn."""
    rng = np.random.default_rng([seed, 0x5EED])
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = make_scene(
            rng,
            background=COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))],
            style=STYLES[int(rng.integers(len(STYLES)))],
            kind=SHAPES[len(scenes) % len(SHAPES)],
        )
        if not is_held_out(scene.shapes[0], scene):
            scenes.append(scene)
    return scenes


def regular_dataset(n: int = 12, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``n`` ordinary one-shape scenes the demo model already draws, with their full captions (no trigger).

    Mixed into a LoRA's examples they hold what prompts without the trigger draw (DreamBooth's prior
    preservation, with true renders as the class images): a LoRA of trigger captions alone turns every
    prompt's shape into its concept.
    """
    return [(render(s), caption(s)) for s in regular_scenes(n, seed)]


def lora_training_examples(trigger: str = LORA_TRIGGER) -> list[tuple[Image.Image, str]]:
    """What the demo LoRA trains on: 24 hearts with the trigger, 24 ordinary scenes and 6 of them uncaptioned
    (these keep the unconditional prediction, which guidance subtracts, where it was)."""
    uncaptioned = [(image, "") for image, _ in regular_dataset(6, seed=5)]
    return lora_dataset(24, trigger) + regular_dataset(24) + uncaptioned
