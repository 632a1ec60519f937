"""LoRA adapters and textual-inversion embeddings on warm weights.

Each adapter is loaded once (diffusers' ``load_lora_weights``: the diffusers/PEFT key layout and the
kohya/A1111 one both load) and stays resident up to a bound, least recently used out first. A job
activates its set with its scales; after every job, failed and canceled ones included, the pipeline
goes back to the bare base model (``disable_lora``), so no job's adapters touch the next one.

Embeddings are loaded with the model (``load_textual_inversion``): their tokens simply work in the
prompts of every job on that model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sdserve.errors import JobFailed
from sdserve.metrics import ADAPTERS
from sdserve.registry import EmbeddingSpec, LoraSpec
from worker.speed import is_fused

log = logging.getLogger(__name__)

FileResolver = Callable[[str], Path]


class AdapterLoadFailed(JobFailed):
    """An adapter or embedding file could not be loaded."""

    slug = "adapter-load-failed"
    title = "An adapter could not be loaded"


def file_digest(path: Path) -> str:
    """SHA-256 of an adapter file (recorded in each job's manifest)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_name(name: str) -> str:
    """PEFT adapter names may not contain dots (they become module keys)."""
    return name.replace(".", "_")


@dataclass
class Resident:
    """An adapter loaded into a model."""

    spec: LoraSpec
    sha256: str
    load_ms: float


@dataclass
class Activation:
    """What one job got: for its timings and manifest."""

    adapters: list[dict[str, object]]
    load_ms: float
    activate_ms: float


class AdapterSet:
    """The LoRA adapters of one loaded model."""

    def __init__(self, pipe: Any, resolve: FileResolver, *, max_resident: int) -> None:
        self.pipe = pipe
        self.resolve = resolve
        self.max_resident = max_resident
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.evictions = 0
        self.active = False
        self._refuse = False

    def _load(self, spec: LoraSpec) -> Resident:
        path = self.resolve(spec.file)
        started = time.perf_counter()
        try:
            self.pipe.load_lora_weights(str(path), adapter_name=adapter_name(spec.name))
        except Exception as exc:
            log.exception("loading LoRA %s from %s failed", spec.name, path)
            raise AdapterLoadFailed(f"LoRA {spec.name!r} could not be loaded: {exc.__class__.__name__}") from exc
        self.loads += 1
        ADAPTERS.labels("load").inc()
        return Resident(spec=spec, sha256=file_digest(path), load_ms=(time.perf_counter() - started) * 1000)

    def _evict_for(self, keep: set[str]) -> None:
        while len(self.resident) >= self.max_resident:
            victim = next((name for name in self.resident if name not in keep), None)
            if victim is None:
                return
            self.pipe.delete_adapters(adapter_name(victim))
            del self.resident[victim]
            self.evictions += 1
            ADAPTERS.labels("eviction").inc()
            log.info("evicted LoRA %s (least recently used)", victim)

    def activate(self, wanted: list[tuple[LoraSpec, float]]) -> Activation:
        """Load what is missing, then make exactly ``wanted`` active with its scales."""
        started = time.perf_counter()
        load_ms = 0.0
        keep = {spec.name for spec, _ in wanted}
        for spec, _ in wanted:
            if spec.name in self.resident:
                self.hits += 1
                ADAPTERS.labels("hit").inc()
            else:
                self._evict_for(keep)
                self.resident[spec.name] = self._load(spec)
                load_ms += self.resident[spec.name].load_ms
            self.resident.move_to_end(spec.name)
        if wanted and is_fused(self.pipe):
            self.pipe.unfuse_qkv_projections()  # LoRA layers wrap to_q/to_k/to_v, which fused attention skips
            self._refuse = True
        if wanted:
            self.pipe.enable_lora()
            self.pipe.set_adapters(
                [adapter_name(spec.name) for spec, _ in wanted], adapter_weights=[scale for _, scale in wanted]
            )
            self.active = True
        total_ms = (time.perf_counter() - started) * 1000
        return Activation(
            adapters=[
                {"name": spec.name, "scale": scale, "sha256": self.resident[spec.name].sha256, "file": spec.file}
                for spec, scale in wanted
            ],
            load_ms=load_ms,
            activate_ms=total_ms - load_ms,
        )

    def reset(self) -> None:
        """Back to the bare base model (every adapter stays loaded, none is active)."""
        if self.active or self.resident:
            self.pipe.disable_lora()
            self.active = False
        if self._refuse:
            self.pipe.fuse_qkv_projections()
            self._refuse = False


def load_embeddings(pipe: Any, embeddings: list[EmbeddingSpec], resolve: FileResolver) -> None:
    """Teach a pipeline's tokenizer(s) and text encoder(s) the embeddings' tokens."""
    for spec in embeddings:
        path = resolve(spec.file)
        try:
            tensors = load_file(str(path))
            if "clip_l" in tensors and "clip_g" in tensors:  # SDXL: one vector set per text encoder
                pipe.load_textual_inversion(
                    tensors["clip_l"], token=spec.token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
                )
                pipe.load_textual_inversion(
                    tensors["clip_g"], token=spec.token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
                )
            else:
                pipe.load_textual_inversion(str(path), token=spec.token)
        except Exception as exc:
            log.exception("loading embedding %s from %s failed", spec.name, path)
            raise AdapterLoadFailed(f"embedding {spec.name!r} could not be loaded") from exc
        log.info("loaded embedding %s (token %s)", spec.name, spec.token)
