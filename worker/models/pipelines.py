"""Load each model once and keep it warm.

A model's base pipeline is loaded through diffusers' ``from_pretrained`` (safetensors only) or
``from_single_file`` for a single checkpoint. Jobs never mutate the shared pipeline: each gets a
light per-job view with its own scheduler (``view``), which shares every weight with the base.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from sdserve.observe.metrics import Metrics
from sdserve.registry import Family, ModelSpec, Registry, RegistryHolder
from sdserve.registry.specs import STORE_FILE_PREFIX
from sdserve.storage.base import ObjectStore
from worker.models.adapter_files import AdapterFileFailed, StoredAdapterFiles, digest_of
from worker.models.builtin import ensure_builtin
from worker.models.builtin_weights import ensure_builtin_file
from worker.models.device import DeviceConfig
from worker.models.embeddings import load_embeddings
from worker.models.loras import LoraCache
from worker.models.schedulers import make_scheduler
from worker.models.speed import SpeedOptions, optimize

log = logging.getLogger(__name__)


PipelineKind = Literal["txt2img", "img2img", "inpaint"]
"""Which diffusers pipeline a recipe runs (outpainting is inpainting on a larger canvas)."""


def pipeline_class(family: Family, kind: PipelineKind) -> Any:
    """The diffusers pipeline class for a model family and a pipeline kind."""
    import diffusers

    names = {
        ("sd1", "txt2img"): "StableDiffusionPipeline",
        ("sd1", "img2img"): "StableDiffusionImg2ImgPipeline",
        ("sd1", "inpaint"): "StableDiffusionInpaintPipeline",
        ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
        ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
        ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
    }
    return getattr(diffusers, names[(family, kind)])


@dataclass
class LoadedModel:
    """A warm base pipeline and what it was loaded from."""

    spec: ModelSpec
    pipe: Any
    path: str
    load_seconds: float
    bytes: int = 0
    attention: str = "sdpa"
    speed: dict[str, object] = field(default_factory=dict)
    loras: LoraCache | None = None
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)

    def view(self, scheduler: str, kind: PipelineKind = "txt2img") -> Any:
        """A pipeline of the given kind sharing every weight of the base, with a fresh scheduler.

        img2img and inpaint pipelines are derived with ``from_pipe``: no weight is loaded or copied.
        """
        derived = self._derived.get(kind)
        if derived is None:
            cls = pipeline_class(self.spec.family, kind)
            derived = self.pipe if type(self.pipe) is cls else cls.from_pipe(self.pipe)
            self._derived[kind] = derived
        fresh = make_scheduler(scheduler, self.pipe.scheduler.config)
        cls = type(derived)
        accepted = inspect.signature(cls.__init__).parameters
        options = {k: v for k, v in derived.config.items() if k in accepted and k not in derived.components}
        view = cls(**{**derived.components, **options, "scheduler": fresh})
        view.set_progress_bar_config(disable=True)
        return view


def select_attention(pipe: Any, device: torch.device) -> str:
    """xformers' memory-efficient attention where installed and working, else PyTorch SDPA (diffusers' default)."""
    if device.type == "cuda" and importlib.util.find_spec("xformers") is not None:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # a wheel for another torch/CUDA, an unsupported GPU
            log.warning("xformers present but unusable (%s: %s): using PyTorch SDPA", type(exc).__name__, exc)
            pipe.disable_xformers_memory_efficient_attention()
        else:
            return "xformers"
    return "sdpa"


def model_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of a pipeline's modules (what it holds on the device)."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


class PipelineCache:
    """The models a worker serves: each loaded once, kept warm within a memory budget.

    When loading a model would take the resident set over ``memory_budget`` bytes, the least recently
    used other models are unloaded first. Each model carries its LoRAs (``LoraCache``) and has its registry
    embeddings loaded. Specs are read from the process's registry holder, so a reload is seen at once.
    """

    def __init__(
        self,
        registry: RegistryHolder,
        device: DeviceConfig,
        models_dir: Path,
        *,
        memory_budget: int | None = None,
        max_loras: int = 8,
        speed: SpeedOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.holder = registry
        self.metrics = metrics or Metrics()
        self.device = device
        self.models_dir = models_dir
        self.memory_budget = memory_budget
        self.max_loras = max_loras
        self.speed = speed or SpeedOptions()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.stored_files = StoredAdapterFiles(models_dir / "adapters")
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()

    @property
    def registry(self) -> Registry:
        return self.holder.current

    def resolve_file(self, file: str, sha256: str | None = None) -> Path:
        """The path of a LoRA or embedding file: ``builtin:`` ones are generated on first use, ``store:`` ones are
        the local copies ``fetch`` made; a pinned ``sha256`` is checked (a ``store:`` copy was, when fetched)."""
        if file.startswith(STORE_FILE_PREFIX):
            return self.stored_files.local(file, sha256)
        if file.startswith("builtin:"):
            path = ensure_builtin_file(file.removeprefix("builtin:"), self.models_dir)
        else:
            path = Path(file)
        if sha256 is not None and digest_of(path) != sha256:
            raise AdapterFileFailed(f"{file} does not have the SHA-256 the registry pins")
        return path

    def fetch(self, store: ObjectStore, file: str, sha256: str) -> Path:
        """Make the local copy of a ``store:`` file (a key's own adapter) with this digest, once."""
        return self.stored_files.fetch(store, file, sha256)

    def resident_bytes(self) -> int:
        """Bytes held by the resident models."""
        return sum(m.bytes for m in self._loaded.values())

    def _make_room(self, keep: str, incoming: int) -> None:
        if self.memory_budget is None:
            return
        while self.resident_bytes() + incoming > self.memory_budget:
            victim = next((name for name in self._loaded if name != keep), None)
            if victim is None:
                return
            self.unload(victim)

    def unload(self, name: str) -> None:
        """Drop a resident model (its LoRAs go with it)."""
        loaded = self._loaded.pop(name, None)
        if loaded is None:
            return
        self.unloads[name] += 1
        del loaded
        gc.collect()
        if self.device.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("unloaded model %s to stay within the memory budget", name)

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
            self._loaded.move_to_end(name)
            return loaded
        spec = self.registry.model(name)
        source = self.resolve_source(spec)
        cls = pipeline_class(spec.family, "inpaint" if spec.inpainting else "txt2img")
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"dtype": self.device.dtype}
        if source.endswith(".safetensors"):
            pipe = cls.from_single_file(source, **kwargs)
        else:
            if spec.family == "sd1":
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(source, use_safetensors=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        size = model_bytes(pipe)
        self._make_room(keep=name, incoming=size)
        pipe.to(self.device.device)
        attention = select_attention(pipe, self.device.device)
        applied = optimize(pipe, self.device.device, self.speed)
        load_embeddings(pipe, self.registry.embeddings_for(spec), self.resolve_file)
        loaded = LoadedModel(
            spec=spec,
            pipe=pipe,
            path=source,
            load_seconds=time.perf_counter() - started,
            bytes=size,
            loras=LoraCache(pipe, self.resolve_file, max_resident=self.max_loras, metrics=self.metrics),
            speed=applied,
        )
        self._loaded[name] = loaded
        self.loads[name] += 1
        loaded.attention = attention
        log.info(
            "loaded model %s from %s in %.2fs (%.1f MB, attention: %s)",
            name, source, loaded.load_seconds, size / 1e6, attention,
        )  # fmt: skip
        return loaded

    def loaded(self) -> list[str]:
        """Names of the models resident now."""
        return list(self._loaded)

    def warm(self, name: str) -> float:
        """Load a model and run one small generation through it; returns the seconds it took."""
        started = time.perf_counter()
        loaded = self.load(name)  # outside inference mode: its weights must stay trainable (a training's session)
        with torch.inference_mode():
            self._warm_passes(loaded)
        seconds = time.perf_counter() - started
        if "compile" in loaded.speed:
            log.info("compiled %s for batch sizes %s in %.1fs", name, self.speed.compile_batch_sizes, seconds)
        return seconds

    def _warm_passes(self, loaded: LoadedModel) -> None:
        compiled = "compile" in loaded.speed
        # Compiled models warm at their native size, once per expected batch size (that compiles them);
        # eager ones only need one small pass.
        size = loaded.spec.native_size if compiled else (64 if loaded.spec.family == "sd1" else 128)
        batches = self.speed.compile_batch_sizes if compiled else [1]
        kind: PipelineKind = "inpaint" if loaded.spec.inpainting else "txt2img"
        for batch in batches:
            extra: dict[str, Any] = {}
            if kind == "inpaint":
                extra = {"image": Image.new("RGB", (size, size)), "mask_image": Image.new("L", (size, size), 255)}
            view = loaded.view(loaded.spec.default_scheduler, kind)
            latents = view(
                prompt=["warm-up"] * batch,
                width=size,
                height=size,
                num_inference_steps=2,
                output_type="latent",
                generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                **extra,
            ).images
            if compiled:
                view.vae.decode(latents / view.vae.config.scaling_factor, return_dict=False)
