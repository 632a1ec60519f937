"""Load each model once and keep it warm.

A model's base pipeline is loaded through diffusers' ``from_pretrained`` (safetensors only) or
``from_single_file`` for a single checkpoint. Jobs never mutate the shared pipeline: each gets a
light per-job view with its own scheduler (``view``), which shares every weight with the base.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdserve.registry import ModelSpec, Registry
from worker.builtin import ensure_builtin
from worker.device import DeviceConfig
from worker.schedulers import make_scheduler

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A warm base pipeline and what it was loaded from."""

    spec: ModelSpec
    pipe: Any
    path: str
    load_seconds: float

    def view(self, scheduler: str) -> Any:
        """A pipeline sharing the base's weights with a fresh scheduler of its own."""
        components = dict(self.pipe.components)
        components["scheduler"] = make_scheduler(scheduler, self.pipe.scheduler.config)
        view = type(self.pipe)(**components)
        view.set_progress_bar_config(disable=True)
        return view


def _pipeline_class(spec: ModelSpec) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if spec.family == "sdxl" else StableDiffusionPipeline


class PipelineCache:
    """The models a worker serves, loaded once."""

    def __init__(self, registry: Registry, device: DeviceConfig, models_dir: Path) -> None:
        self.registry = registry
        self.device = device
        self.models_dir = models_dir
        self._loaded: dict[str, LoadedModel] = {}

    def resolve_source(self, spec: ModelSpec) -> str:
        """The local folder, file or hub id a spec's ``source`` names."""
        if spec.source.startswith("builtin:"):
            return str(ensure_builtin(spec.source.removeprefix("builtin:"), self.models_dir))
        if spec.source.startswith("hub:"):
            return spec.source.removeprefix("hub:")
        return spec.source

    def load(self, name: str) -> LoadedModel:
        """The warm pipeline of a model, loading it the first time."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        spec = self.registry.model(name)
        source = self.resolve_source(spec)
        cls = _pipeline_class(spec)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"dtype": self.device.dtype}
        if source.endswith(".safetensors"):
            pipe = cls.from_single_file(source, **kwargs)
        else:
            if spec.family == "sd1":
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(source, use_safetensors=True, **kwargs)
        pipe.to(self.device.device)
        pipe.set_progress_bar_config(disable=True)
        loaded = LoadedModel(spec=spec, pipe=pipe, path=source, load_seconds=time.perf_counter() - started)
        self._loaded[name] = loaded
        log.info("loaded model %s from %s in %.2fs", name, source, loaded.load_seconds)
        return loaded

    def loaded(self) -> list[str]:
        """Names of the models resident now."""
        return list(self._loaded)

    @torch.inference_mode()
    def warm(self, name: str) -> float:
        """Load a model and run one small generation through it; returns the seconds it took."""
        started = time.perf_counter()
        loaded = self.load(name)
        pipe = loaded.view(loaded.spec.default_scheduler)
        pipe(
            prompt="warm-up",
            width=64 if loaded.spec.family == "sd1" else 128,
            height=64 if loaded.spec.family == "sd1" else 128,
            num_inference_steps=2,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(0),
        )
        return time.perf_counter() - started
