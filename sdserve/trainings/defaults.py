"""Every default of a training, resolved at submit so the stored request says exactly what runs.

Per method and model family, after diffusers' example scripts (``train_text_to_image_lora.py``,
``textual_inversion.py``): AdamW, a constant learning rate after a short warm-up, min-SNR weighting (γ = 5),
random flips, centre crops at the model's native size. A registry model may override any of them for its own
trainings (``ModelSpec.training_defaults``; the built-in ``demo`` model does, to learn in a minute on a CPU).
``docs/training.md`` lists them.
"""

from __future__ import annotations

import secrets
from typing import Any

from sdserve.contract.limits import MAX_SEED
from sdserve.registry.specs import ModelSpec
from sdserve.trainings.requests import Method, TrainingRequest

FAMILY_DEFAULTS: dict[tuple[Method, str], dict[str, Any]] = {
    ("lora", "sd1"): {"steps": 1000, "learning_rate": 1e-4, "warmup_steps": 50, "batch_size": 4, "rank": 8},
    ("lora", "sdxl"): {"steps": 1000, "learning_rate": 1e-4, "warmup_steps": 50, "batch_size": 4, "rank": 8},
    # diffusers' textual_inversion.py: 5e-4 scaled by its batch (x4), so 2e-3 at batch 4
    ("textual_inversion", "sd1"): {"steps": 2000, "learning_rate": 2e-3, "warmup_steps": 100, "batch_size": 4},
    ("textual_inversion", "sdxl"): {"steps": 2000, "learning_rate": 2e-3, "warmup_steps": 100, "batch_size": 2},
}


def resolve(request: TrainingRequest, spec: ModelSpec) -> TrainingRequest:
    """The request with its base model named and every null hyperparameter (and validation default) filled."""
    defaults = dict(FAMILY_DEFAULTS[(request.method, spec.family)])
    defaults.update(spec.training_defaults.get(request.method, {}))
    hp = request.hyperparameters
    fields: dict[str, Any] = hp.model_dump()
    for name, value in defaults.items():  # what the caller set explicitly wins
        if name in type(hp).model_fields and (name not in hp.model_fields_set or fields[name] is None):
            fields[name] = value
    if fields["resolution"] is None:
        fields["resolution"] = spec.native_size
    if fields["seed"] is None:
        fields["seed"] = secrets.randbelow(MAX_SEED + 1)
    if request.method == "lora":
        if fields["alpha"] is None:
            fields["alpha"] = float(fields["rank"])
    else:
        fields["rank"] = fields["alpha"] = None
    steps = int(fields["steps"])
    fields["warmup_steps"] = min(int(fields["warmup_steps"] or 0), steps)
    if fields["checkpoint_every"] is None:
        fields["checkpoint_every"] = max(25, steps // 10)
    update: dict[str, Any] = {"base_model": spec.name, "hyperparameters": type(hp).model_validate(fields)}
    if request.validation is not None:
        validation = request.validation
        update["validation"] = validation.model_copy(
            update={
                "steps": validation.steps or spec.default_steps,
                "guidance": spec.default_guidance if validation.guidance is None else validation.guidance,
            }
        )
    return request.model_copy(update=update)
