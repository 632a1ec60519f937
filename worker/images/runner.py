"""Image generation on the worker: the recipe every image job (or batch of txt2img jobs) runs.

``ImageRunner.run`` is the numbered recipe, in the engine's frame (``worker.engine.runner``: 1 claim, 7 finish):

2. **resolve inputs**: the stored requests (resolved by the gateway: every default, the seed, the LoRA
   scales), typed; the task's inputs (the image fitted, a mask made, a canvas built);
3. **select pipeline and LoRAs**: the warm model, a view of it with a fresh scheduler, and the job's LoRAs at
   the scales the gateway resolved (``LoraScope``: gone again when the step ends, whatever happens), with its
   key's own adapters fetched by file and digest and its own embeddings taught for it (``EmbeddingScope``);
4. **denoise**: every request's prompts and seeds in one pipeline call, each step reported (and a cancel seen);
5. **post-process**: decode the latents, then the task's own pixel work (composite, crop);
6. **store**: each job's images, mask and manifest under its own attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch

from sdserve.images.kind import IMAGE
from sdserve.images.params import OwnedAdapterRef
from sdserve.images.requests import AnyRequest, parse_request
from sdserve.images.view import ImageJobResult
from sdserve.jobs.tracker import JobTracker
from sdserve.observe.metrics import Metrics
from sdserve.observe.tracing import span
from sdserve.registry import EmbeddingSpec, LoraSpec, ModelSpec, Registry, RegistryHolder
from sdserve.settings import Settings
from worker.engine.kind import Claimed, QueueRef
from worker.engine.progress import Reporter
from worker.images.batching import Batcher
from worker.images.generation import GeneratedImage, decode_latents, generators, image_seeds, styled_prompts
from worker.images.outputs import library_versions, write_images, write_manifest, write_mask
from worker.images.prompts import long_prompt_embeddings, too_long
from worker.images.recipes import RECIPES
from worker.images.recipes.base import Finished, Inputs, RecipeContext
from worker.images.steps import Member, StepCallback
from worker.models.embeddings import EmbeddingScope
from worker.models.loras import Activation, LoraScope
from worker.models.pipelines import LoadedModel, PipelineCache

log = logging.getLogger(__name__)


@dataclass
class Denoised:
    """What step 4 made: the latents of every image of the call, and how."""

    latents: torch.Tensor
    pipe: Any
    prompts: list[tuple[str, str]]
    """The prompt and negative prompt each request ran with (its style applied)."""
    seeds: list[list[int]]
    """Each request's seeds, one per image."""
    long_prompts: bool


class ImageRunner:
    """Runs image jobs on this worker's warm pipelines."""

    kind = IMAGE.name

    def __init__(
        self,
        settings: Settings,
        registry: RegistryHolder,
        pipelines: PipelineCache,
        tracker: JobTracker,
        metrics: Metrics,
        *,
        worker_name: str,
        device: str,
        batcher: Batcher | None = None,
    ) -> None:
        self.settings = settings
        self.holder = registry
        self.pipelines = pipelines
        self.tracker = tracker
        self.metrics = metrics
        self.worker_name = worker_name
        self.device = device
        self.batcher = batcher

    def queues(self) -> list[QueueRef]:
        """One queue per model this worker serves (the model's name)."""
        return [QueueRef(model) for model in self.settings.worker_models]

    def collect(self, job_id: str, queue: str) -> list[str]:
        return self.batcher.collect(job_id, queue) if self.batcher is not None else []

    def describe(self) -> dict[str, Any]:
        return {"models": list(self.settings.worker_models), "resident": self.pipelines.loaded()}

    def run(self, jobs: list[Claimed]) -> dict[str, dict[str, Any]]:
        registry = self.holder.current  # one registry for the whole call, even if a reload lands meanwhile

        # 2. Resolve inputs: the requests as the gateway resolved them (typed), and the task's inputs.
        requests: list[AnyRequest] = [parse_request(job.record.request) for job in jobs]
        first = requests[0]
        recipe = RECIPES[first.task]
        assert first.model is not None and first.scheduler is not None, "the gateway resolved the request"
        started = time.perf_counter()
        model = self.pipelines.load(first.model)
        model_load_ms = (time.perf_counter() - started) * 1000
        ctx = RecipeContext(model=model, registry=registry, read_input=jobs[0].artifacts.read_input)
        inputs = recipe.inputs(ctx, first)

        # 3. Select the pipeline (a view of the warm weights with a fresh scheduler) and the job's LoRAs.
        started = time.perf_counter()
        pipe = model.view(first.scheduler, inputs.kind)
        ctx.timings["load_ms"] = (time.perf_counter() - started) * 1000
        assert model.loras is not None
        store, fetch_started = jobs[0].artifacts.store, time.perf_counter()
        for owned in first.owned_adapters:  # a key's own: by the file and digest the gateway resolved
            self.pipelines.fetch(store, owned.file, owned.sha256)
        fetch_ms = (time.perf_counter() - fetch_started) * 1000
        own_loras = {o.name: owned_lora(o, model.spec) for o in first.owned_adapters if o.kind == "lora"}
        own_embeddings = [owned_embedding(o, model.spec) for o in first.owned_adapters if o.kind == "embedding"]
        wanted = []
        for ref in first.loras:
            assert ref.scale is not None, "the gateway resolved every LoRA's scale"
            wanted.append((own_loras.get(ref.name) or registry.lora(ref.name), ref.scale))
        with (
            EmbeddingScope(model.pipe, own_embeddings, self.pipelines.resolve_file),
            LoraScope(model.loras, wanted) as activation,
        ):
            for job in jobs:
                job.timings["model_load_ms"] = model_load_ms
                job.timings["adapters_ms"] = fetch_ms + activation.load_ms + activation.activate_ms

            # 4. Denoise every request's images in one call, reporting each step.
            reporter = Reporter(self.tracker, jobs, jobs[0].record.total or (first.steps or 1))
            with span("sdserve.generate", **{"sdserve.model": model.spec.name, "sdserve.batch": str(len(jobs))}):
                denoised = self._denoise(ctx, pipe, model, registry, requests, jobs, inputs, reporter)

        # 5. Post-process: decode every image at once, then the task's own pixel work, per request.
        started = time.perf_counter()
        decoded = decode_latents(
            denoised.pipe, denoised.latents, upcast=model.spec.family == "sdxl",
            tile_min_pixels=self.settings.vae_tiling_min_pixels,
        )  # fmt: skip
        ctx.timings["decode_ms"] = (time.perf_counter() - started) * 1000
        finished: list[Finished] = []
        offset = 0
        for request in requests:
            own = decoded[offset : offset + request.num_images]
            offset += request.num_images
            finished.append(recipe.post_process(ctx, request, inputs, own))

        # 6. Store each live job's images, mask and manifest under its own attempt.
        results: dict[str, dict[str, Any]] = {}
        live = {job.id for job in reporter.live()}
        batch_images = sum(r.num_images for r in requests)  # images per forward pass (the manifest's batch_size)
        self._observe([r for j, r in zip(jobs, requests, strict=True) if j.id in live], model)
        for i, (job, request, done) in enumerate(zip(jobs, requests, finished, strict=True)):
            if job.id not in live:
                continue  # canceled or superseded during the call: its outputs are not stored
            job.timings.update(ctx.timings)
            with span("sdserve.store", **{"sdserve.job_id": job.id}):
                results[job.id] = self._store(job, request, model, denoised, i, done, activation, pipe, batch_images)
        return results

    def _denoise(
        self,
        ctx: RecipeContext,
        pipe: Any,
        model: LoadedModel,
        registry: Registry,
        requests: list[AnyRequest],
        jobs: list[Claimed],
        inputs: Inputs,
        reporter: Reporter,
    ) -> Denoised:
        first = requests[0]
        prompts: list[str] = []
        negatives: list[str] = []
        seeds: list[list[int]] = []
        styled: list[tuple[str, str]] = []
        members: list[Member] = []
        for job, request in zip(jobs, requests, strict=True):
            assert request.seed is not None, "the gateway resolved the seed"
            prompt, negative = styled_prompts(request, registry)
            members.append(Member(job, first_image=len(prompts)))
            styled.append((prompt, negative))
            prompts += [prompt] * request.num_images
            negatives += [negative] * request.num_images
            seeds.append(image_seeds(request.seed, request.num_images))
        callback = StepCallback(
            reporter, members, preview_every=self.settings.preview_every_steps, family=model.spec.family
        )
        long = too_long(pipe, prompts + negatives)
        if long:
            text: dict[str, Any] = long_prompt_embeddings(pipe, prompts, negatives, sdxl=model.spec.family == "sdxl")
        else:
            text = {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None}
        started = time.perf_counter()
        with torch.inference_mode():
            latents = pipe(
                **text,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                num_images_per_prompt=1,
                generator=generators([s for own in seeds for s in own]),
                output_type="latent",
                callback_on_step_end=callback,
                **inputs.pipeline_args,
            ).images
        ctx.timings["inference_ms"] = (time.perf_counter() - started) * 1000
        return Denoised(latents=latents, pipe=pipe, prompts=styled, seeds=seeds, long_prompts=long)

    def _store(
        self,
        job: Claimed,
        request: AnyRequest,
        model: LoadedModel,
        denoised: Denoised,
        index: int,
        done: Finished,
        activation: Activation,
        pipe: Any,
        batch: int,
    ) -> dict[str, Any]:
        """Store one job's outputs; ``batch``: the images of the pipeline call it ran in (all jobs')."""
        started = time.perf_counter()
        seeds = denoised.seeds[index]
        images = [GeneratedImage(index=i, seed=s, image=img) for i, (s, img) in enumerate(zip(seeds, done.images,
                                                                                             strict=True))]  # fmt: skip
        prompt, negative = denoised.prompts[index]
        stored, digests = write_images(job.artifacts, request, images, (prompt, negative))
        mask_key = write_mask(job.artifacts, done.mask) if done.mask is not None else None
        record = job.record
        manifest = {
            "job_id": record.id,
            "attempt": job.attempt.number,
            "task": request.task,
            "model": {"name": model.spec.name, "family": model.spec.family, "source": model.spec.source},
            "request": request.model_dump(mode="json", exclude={"webhook"}),
            "effective": {
                "prompt": prompt, "negative_prompt": negative, "seeds": seeds, "batch_size": batch,
                "long_prompt_chunked": denoised.long_prompts, "scheduler_class": type(pipe.scheduler).__name__,
                "pipeline_class": type(pipe).__name__, **done.details,
            },
            "images": [{**img.model_dump(), "sha256": digest} for img, digest in zip(stored, digests, strict=True)],
            "inputs": record.inputs,
            "mask": mask_key,
            "loras": activation.loras,
            "worker": {"name": self.worker_name, "device": self.device, "attention": model.attention},
            "versions": library_versions(),
            "created_at": _iso(record.created_at),
            "started_at": _iso(record.started_at),
            "finished_at": datetime.now(UTC).isoformat(),
        }  # fmt: skip
        job.timings["upload_ms"] = (time.perf_counter() - started) * 1000
        manifest_key = write_manifest(job.artifacts, {**manifest, "timings": job.timings})
        return ImageJobResult(images=stored, manifest_key=manifest_key, mask_key=mask_key).model_dump(mode="json")

    def _observe(self, requests: list[AnyRequest], model: LoadedModel) -> None:
        self.metrics.batch_size.observe(sum(r.num_images for r in requests))
        for request in requests:
            self.metrics.images.labels(model.spec.name, request.task).inc(request.num_images)
        self.metrics.resident_models.set(len(self.pipelines.loaded()))
        if torch.cuda.is_available():
            self.metrics.gpu_memory.set(torch.cuda.memory_allocated())
            self.metrics.gpu_memory_peak.set(torch.cuda.max_memory_allocated())


def owned_lora(ref: OwnedAdapterRef, model: ModelSpec) -> LoraSpec:
    """The spec a key's own LoRA runs with (the gateway checked that it fits the model)."""
    return LoraSpec(name=ref.name, file=ref.file, sha256=ref.sha256, family=model.family)


def owned_embedding(ref: OwnedAdapterRef, model: ModelSpec) -> EmbeddingSpec:
    """The spec a key's own embedding runs with (the gateway found its token in the prompts)."""
    assert ref.token is not None, "an embedding has a token"
    return EmbeddingSpec(name=ref.name, file=ref.file, sha256=ref.sha256, token=ref.token, family=model.family)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None
