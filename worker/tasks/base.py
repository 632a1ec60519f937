"""What a task recipe receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdserve.registry import Registry
from worker.generation import GeneratedImage
from worker.pipelines import LoadedModel
from worker.progress import StepReporter


@dataclass
class TaskContext:
    """Everything a recipe may use: the warm model, the registry, progress, and a timing sheet."""

    job_id: str
    model: LoadedModel
    registry: Registry
    reporter: StepReporter
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskOutput:
    """Images and the facts the manifest should record about how they were made."""

    images: list[GeneratedImage]
    details: dict[str, object] = field(default_factory=dict)
