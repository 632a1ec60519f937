"""Adapter trainings on the shipped demo model, standalone (no service): the acceptance criteria of issue #16.

On the warm demo pipeline (CPU), a ``TrainingSession`` (worker/trainings/session.py) with the demo's defaults

* trains a **LoRA** that teaches the trigger word ``sks`` a shape the model never drew (train/concepts.py), read
  back by silhouette (``train.pixels.shape_kind``): before, at most 1 of 10 prompts with the trigger show it;
  after, at least 7 of 10; prompts without the trigger score within 5 points of the base model on 20 held-out
  scenes (background, shape colour and position by exact pixel analysis, as tests/demo/test_demo_model.py);
* trains a **textual-inversion** embedding of ``<teal>``, a colour the vocabulary lacks: before, at most 1 of 10
  prompts draw a teal shape, after at least 7;
* exports files that diffusers' own loaders take (a LoRA at scale 0 draws the base's pixels, at scale 1 the
  session's), resumes from a checkpoint exactly, and ``close()`` leaves the pipeline drawing the base's pixels.

Every image is drawn at the model's default steps and guidance, with seeds 1000 + i. One LoRA and one embedding are
trained per run of this file (module fixtures), and the numbers are printed (``pytest -s``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdserve.registry import Registry
from train.concepts import (
    LORA_KIND,
    LORA_TRIGGER,
    TI_INITIALIZER,
    TI_TOKEN,
    lora_dataset,
    lora_prompts,
    regular_dataset,
    ti_dataset,
    ti_prompts,
)
from train.dataset import caption, held_out_scenes
from train.pixels import is_teal, read, shape_kind
from worker.models.builtin import DEMO_DIR
from worker.trainings.session import TrainingSession, defaults

SPEC = Registry.load(None, "demo").model("demo")
HELD_OUT = held_out_scenes(0, 20)
ADHERENCE = [caption(scene) for scene in HELD_OUT]
LORA_PROMPTS = lora_prompts(10)
TI_PROMPTS = ti_prompts(10)
SEED = 1000


def _pipeline() -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DEMO_DIR, use_safetensors=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe: Any, prompts: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        out = pipe(
            prompts, height=256, width=256, num_inference_steps=SPEC.default_steps,
            guidance_scale=SPEC.default_guidance,
            generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(len(prompts))],
        )  # fmt: skip
    return [np.asarray(image.convert("RGB")) for image in out.images]


def adherence(images: list[np.ndarray]) -> float:
    """Percent of (background, shape colour, position) read back right over the held-out scenes."""
    right = 0
    for image, scene in zip(images, HELD_OUT, strict=True):
        reading = read(image)
        shape = scene.shapes[0]
        right += (reading.background == scene.background) + (reading.colour == shape.colour)
        right += reading.position == shape.position
    return 100.0 * right / (3 * len(HELD_OUT))


def concept_count(images: list[np.ndarray]) -> int:
    return sum(shape_kind(image) == LORA_KIND for image in images)


def fingerprint(pipe: Any) -> dict[str, Any]:
    """What a session may change: module types, parameters, modes, requires_grad, hooks, the tokenizer."""
    modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    return {
        "types": [type(m).__name__ for root in modules for m in root.modules()],
        "params": [(n, p.shape, p.requires_grad, float(p.detach().double().sum())) for root in modules
                   for n, p in root.named_parameters()],
        "training": [m.training for root in modules for m in root.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for root in modules for m in root.modules()),
        "tokenizer": (len(pipe.tokenizer), pipe.tokenizer(TI_PROMPTS[0]).input_ids),
        "vocab_size": pipe.text_encoder.config.vocab_size,
        "peft": getattr(pipe.unet, "_hf_peft_config_loaded", None),
    }  # fmt: skip


@dataclass
class Base:
    lora: list[np.ndarray]
    ti: list[np.ndarray]
    held_out: list[np.ndarray]
    state: dict[str, Any]


@dataclass
class Trained:
    seconds: float
    images: list[np.ndarray]
    held_out: list[np.ndarray]
    data: bytes
    meta: dict[str, Any]


@pytest.fixture(scope="module")
def pipe() -> Any:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return _pipeline()


@pytest.fixture(scope="module")
def base(pipe: Any) -> Base:
    images = draw(pipe, LORA_PROMPTS + TI_PROMPTS + ADHERENCE)
    return Base(images[:10], images[10:20], images[20:], fingerprint(pipe))


@pytest.fixture(scope="module")
def lora(pipe: Any, base: Base) -> Trained:
    examples = lora_dataset() + regular_dataset(24) + [(image, "") for image, _ in regular_dataset(6, seed=5)]
    started = time.perf_counter()
    session = TrainingSession(pipe, "lora", examples, defaults("lora", "sd1", "demo"), trigger_word=LORA_TRIGGER)
    try:
        session.run()
        seconds = time.perf_counter() - started
        images = [np.asarray(i) for i in session.render(LORA_PROMPTS + ADHERENCE, SEED, SPEC.default_steps,
                                                         SPEC.default_guidance, 256)]  # fmt: skip
        data, meta = session.export()
    finally:
        session.close()
    return Trained(seconds, images[:10], images[10:], data, meta)


@pytest.fixture(scope="module")
def ti(pipe: Any, base: Base) -> Trained:
    hp = defaults("textual_inversion", "sd1", "demo")
    started = time.perf_counter()
    session = TrainingSession(
        pipe, "textual_inversion", ti_dataset(), hp, trigger_word=TI_TOKEN, initializer_token=TI_INITIALIZER
    )
    try:
        session.run()
        seconds = time.perf_counter() - started
        images = [np.asarray(i) for i in session.render(TI_PROMPTS, SEED, SPEC.default_steps, SPEC.default_guidance, 256)]
        data, meta = session.export()
    finally:
        session.close()
    return Trained(seconds, images, [], data, meta)


@pytest.fixture(scope="module")
def fresh() -> Any:
    """A second demo pipeline, for diffusers' own loaders."""
    return _pipeline()


def test_the_lora_teaches_the_trigger_word_a_new_shape(base: Base, lora: Trained) -> None:
    before, after = concept_count(base.lora), concept_count(lora.images)
    print(f"\nLoRA: {LORA_KIND}s before {before}/10, after {after}/10; trained in {lora.seconds:.0f} s")
    assert before <= 1 and after >= 7, [shape_kind(i) for i in lora.images]
    assert lora.seconds < 300


def test_prompts_without_the_trigger_still_follow_the_prompt(base: Base, lora: Trained) -> None:
    plain, with_lora = adherence(base.held_out), adherence(lora.held_out)
    kinds = sum(shape_kind(i) == s.shapes[0].kind for i, s in zip(lora.held_out, HELD_OUT, strict=True))
    base_kinds = sum(shape_kind(i) == s.shapes[0].kind for i, s in zip(base.held_out, HELD_OUT, strict=True))
    print(f"\nheld-out adherence: base {plain:.1f} %, with the LoRA {with_lora:.1f} % "
          f"(shape kind {base_kinds}/20 → {kinds}/20)")  # fmt: skip
    assert with_lora >= plain - 5.0


def test_the_embedding_teaches_a_new_colour(base: Base, ti: Trained) -> None:
    before, after = sum(map(is_teal, base.ti)), sum(map(is_teal, ti.images))
    print(f"\ntextual inversion: teal before {before}/10, after {after}/10; trained in {ti.seconds:.0f} s")
    assert before <= 1 and after >= 7


def test_close_puts_the_pipeline_back_exactly(pipe: Any, base: Base, lora: Trained, ti: Trained) -> None:
    assert fingerprint(pipe) == base.state
    again = draw(pipe, [ADHERENCE[0], TI_PROMPTS[0]])
    assert np.array_equal(again[0], base.held_out[0]) and np.array_equal(again[1], base.ti[0])


def test_the_lora_file_loads_in_diffusers(fresh: Any, base: Base, lora: Trained, tmp_path: Path) -> None:
    assert lora.meta["method"] == "lora" and lora.meta["rank"] == defaults("lora", "sd1", "demo").rank
    path = tmp_path / "sks.safetensors"
    path.write_bytes(lora.data)
    fresh.load_lora_weights(str(path), adapter_name="sks")
    try:
        fresh.set_adapters(["sks"], adapter_weights=[0.0])
        zero = draw(fresh, [ADHERENCE[0]])[0]
        fresh.set_adapters(["sks"], adapter_weights=[1.0])
        one = draw(fresh, [LORA_PROMPTS[0]])[0]
    finally:
        fresh.unload_lora_weights()
    assert np.array_equal(zero, base.held_out[0])  # scale 0: the base model's pixels
    assert np.abs(one.astype(int) - lora.images[0].astype(int)).max() <= 1  # scale 1: what the session drew


def test_the_embedding_file_loads_in_diffusers(fresh: Any, ti: Trained, tmp_path: Path) -> None:
    path = tmp_path / "teal.safetensors"
    path.write_bytes(ti.data)
    fresh.load_textual_inversion(str(path), token=TI_TOKEN)
    try:
        drawn = draw(fresh, [TI_PROMPTS[0]])[0]
    finally:
        fresh.unload_textual_inversion(TI_TOKEN)
    assert np.abs(drawn.astype(int) - ti.images[0].astype(int)).max() <= 1


@pytest.mark.parametrize("method", ["lora", "textual_inversion"])
def test_a_resumed_session_continues_exactly(pipe: Any, base: Base, method: str) -> None:
    hp = dataclasses.replace(defaults(method, "sd1", "demo"), batch_size=2, steps=4, random_flip=True)
    examples = lora_dataset(3) if method == "lora" else ti_dataset(3)
    trigger = LORA_TRIGGER if method == "lora" else TI_TOKEN

    def session() -> TrainingSession:
        return TrainingSession(pipe, method, examples, hp, trigger_word=trigger, initializer_token=TI_INITIALIZER)

    first = session()
    try:
        losses = [first.step()["loss"] for _ in range(2)]
        checkpoint = first.state_dict()
        losses += [first.step()["loss"] for _ in range(2)]
    finally:
        first.close()
    second = session()
    try:
        second.load_state_dict(checkpoint)
        resumed = [second.step()["loss"] for _ in range(2)]
        assert second.step_count == 4
    finally:
        second.close()
    assert resumed == losses[2:]
    assert fingerprint(pipe) == base.state
