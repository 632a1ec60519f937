"""The built-in registry entries: the tiny models and the demo model, their demo LoRAs and embedding."""

from __future__ import annotations

from sdserve.registry.specs import EmbeddingSpec, LoraSpec, ModelSpec

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
        # Provisional (the same as worker.trainings.session's for demo) until tests/demo shows a concept learnt: the
        # demo's captions say left and right, so no flips.
        training_defaults={
            "lora": {
                "steps": 300,
                "learning_rate": 2e-3,
                "warmup_steps": 10,
                "rank": 16,
                "batch_size": 4,
                "random_flip": False,
            },
            "textual_inversion": {
                "steps": 120,
                "learning_rate": 2e-2,
                "warmup_steps": 10,
                "batch_size": 4,
                "random_flip": False,
                "noise_offset": 0.1,
            },
        },
        family="sd1",
        description="A small Stable Diffusion 1.x model trained by sdserve on synthetic scenes: one or two "
        "coloured shapes (circle, square, triangle, star, ring, cross) on a plain or gradient background, "
        "e.g. 'a red circle on a blue background'. Shipped in the repository (fp16, 25 MB); about a second "
        "per 256x256 image on a CPU. See docs/demo-model.md.",
        native_size=256,
        default_steps=20,
        default_guidance=5.0,
        default_scheduler="euler",
        # ddim and pndm draw broken scenes on demo at its 20 steps (tests/demo/test_schedulers.py measures each).
        schedulers=["euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm"],
    ),
}
