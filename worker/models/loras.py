"""LoRAs on warm weights: loaded once, applied per job, gone after it.

Each LoRA is loaded once (diffusers' ``load_lora_weights``: the diffusers/PEFT key layout and the kohya/A1111
one both load) and stays resident up to a bound, least recently used out first; a registry LoRA is resident by
its name, a key's own (pinned by its file's SHA-256) by that digest. A job applies its set with
its scales inside a ``LoraScope``; when the scope ends (the job succeeded, failed or was canceled) the
pipeline is the bare base model again (``disable_lora``), so no job's LoRAs touch the next one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from sdserve.contract.problems import WEIGHTS_LOAD_FAILED, JobFailed
from sdserve.observe.metrics import Metrics
from sdserve.registry import LoraSpec
from worker.models.adapter_files import digest_of
from worker.models.speed import is_fused

log = logging.getLogger(__name__)


class FileResolver(Protocol):
    """The local path of a LoRA or embedding file (``sha256``: the digest it must have, where pinned)."""

    def __call__(self, file: str, sha256: str | None = None, /) -> Path: ...


class LoraLoadFailed(JobFailed):
    """A LoRA file could not be loaded."""

    problem = WEIGHTS_LOAD_FAILED


def peft_name(name: str) -> str:
    """PEFT adapter names may not contain dots (they become module keys)."""
    return name.replace(".", "_")


def residency_key(spec: LoraSpec) -> str:
    """How a loaded LoRA is known: a registry one by its name, one pinned by its file's digest (a key's own)
    by that digest, so two owners' adapters of one name never stand for each other (no name is this long)."""
    return spec.name if spec.sha256 is None else f"sha256-{spec.sha256}"


@dataclass
class Resident:
    """A LoRA loaded into a model."""

    spec: LoraSpec
    sha256: str
    load_ms: float


@dataclass
class Activation:
    """What one job got: for its timings and manifest."""

    loras: list[dict[str, object]]
    load_ms: float
    activate_ms: float


class LoraCache:
    """The LoRAs of one loaded model."""

    def __init__(self, pipe: Any, resolve: FileResolver, *, max_resident: int, metrics: Metrics) -> None:
        self.pipe = pipe
        self.resolve = resolve
        self.max_resident = max_resident
        self.metrics = metrics
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.evictions = 0
        self.active = False
        self._refuse = False

    def _load(self, spec: LoraSpec) -> Resident:
        path = self.resolve(spec.file, spec.sha256)
        started = time.perf_counter()
        try:
            self.pipe.load_lora_weights(str(path), adapter_name=peft_name(residency_key(spec)))
        except Exception as exc:
            log.exception("loading LoRA %s from %s failed", spec.name, path)
            raise LoraLoadFailed(f"LoRA {spec.name!r} could not be loaded: {exc.__class__.__name__}") from exc
        self.loads += 1
        self.metrics.lora_events.labels("load").inc()
        sha256 = spec.sha256 or digest_of(path)  # a pinned digest was checked when the file was resolved
        return Resident(spec=spec, sha256=sha256, load_ms=(time.perf_counter() - started) * 1000)

    def _evict_for(self, keep: set[str]) -> None:
        while len(self.resident) >= self.max_resident:
            victim = next((name for name in self.resident if name not in keep), None)
            if victim is None:
                return
            self.pipe.delete_adapters(peft_name(victim))
            del self.resident[victim]
            self.evictions += 1
            self.metrics.lora_events.labels("eviction").inc()
            log.info("evicted LoRA %s (least recently used)", victim)

    def activate(self, wanted: list[tuple[LoraSpec, float]]) -> Activation:
        """Load what is missing, then make exactly ``wanted`` active with its scales."""
        started = time.perf_counter()
        load_ms = 0.0
        keep = {residency_key(spec) for spec, _ in wanted}
        for spec, _ in wanted:
            key = residency_key(spec)
            if key in self.resident:
                self.hits += 1
                self.metrics.lora_events.labels("hit").inc()
            else:
                self._evict_for(keep)
                self.resident[key] = self._load(spec)
                load_ms += self.resident[key].load_ms
            self.resident.move_to_end(key)
        if wanted and is_fused(self.pipe):
            self.pipe.unfuse_qkv_projections()  # LoRA layers wrap to_q/to_k/to_v, which fused attention skips
            self._refuse = True
        if wanted:
            self.pipe.enable_lora()
            self.pipe.set_adapters(
                [peft_name(residency_key(spec)) for spec, _ in wanted], adapter_weights=[scale for _, scale in wanted]
            )
            self.active = True
        total_ms = (time.perf_counter() - started) * 1000
        return Activation(
            loras=[
                {
                    "name": spec.name,
                    "scale": scale,
                    "sha256": self.resident[residency_key(spec)].sha256,
                    "file": spec.file,
                }
                for spec, scale in wanted
            ],
            load_ms=load_ms,
            activate_ms=total_ms - load_ms,
        )

    def reset(self) -> None:
        """Back to the bare base model (every LoRA stays loaded, none is active)."""
        if self.active or self.resident:
            self.pipe.disable_lora()
            self.active = False
        if self._refuse:
            self.pipe.fuse_qkv_projections()
            self._refuse = False


class LoraScope:
    """A job's LoRAs, applied for the length of a ``with`` block (the scales are the gateway's, resolved).

    ``with LoraScope(cache, [(spec, scale), ...]) as activation:`` loads what is missing and applies exactly
    that set; leaving the block, whatever happened inside, puts the bare base model back.
    """

    def __init__(self, cache: LoraCache, wanted: list[tuple[LoraSpec, float]]) -> None:
        self.cache = cache
        self.wanted = wanted

    def __enter__(self) -> Activation:
        try:
            return self.cache.activate(self.wanted)
        except BaseException:
            self.cache.reset()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.cache.reset()
