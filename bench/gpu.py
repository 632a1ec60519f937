"""sdserve's worker against a plain diffusers loop, side by side, on one GPU.

Builds the real SD 1.5 and SDXL architectures with random weights (speed does not depend on weight
values), saves them as diffusers folders and loads them through sdserve's own PipelineCache, then
runs jobs through the worker's own path (``Engine.execute`` with the ``ImageRunner``, one job or a batch:
the task recipe, the pipeline views, LoRAs, PNG encoding and the manifest, the local object store) and, in the same
run, the plain diffusers baseline (fp16, PyTorch SDPA, default settings, one request at a time).

Redis is not available on the GPU machine, so job records live in an in-memory stand-in for the
tracker with the same interface (one dict write per step instead of a Redis round trip).

    python bench/gpu.py --family sd15,sdxl --compile sd15 --out OUT [--budget 540] [--tiny-vae-seconds 50]
    python bench/gpu.py --smoke --compile ''        # tiny sizes on the CPU: checks the script itself

Every finished stage is appended to OUT/results.json at once, so a run cut short keeps what it
measured. ``--table OUT/results.json ...`` prints the table of one or more result files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.arch import build, matmul_rate, pct, sync  # noqa: E402
from sdserve.contract.lifecycle import JobStatus  # noqa: E402
from sdserve.contract.problems import ProblemType  # noqa: E402
from sdserve.jobs.record import JobRecord  # noqa: E402
from sdserve.jobs.tracker import Attempt, problem_error  # noqa: E402


# --- the worker path without Redis ------------------------------------------------------------------
class MemoryTracker:
    """The JobTracker interface the engine uses, over a dict (Redis is out of reach on the GPU machine)."""

    def __init__(self) -> None:
        self.records: dict[str, JobRecord] = {}

    def add(self, job_id: str, request: dict[str, Any], total: int) -> None:
        self.records[job_id] = JobRecord(
            id=job_id, kind="image", task="txt2img", model=request["model"], queue=request["model"],
            status=JobStatus.QUEUED, request=request, created_at=time.time(), total=total,
        )  # fmt: skip

    def _update(self, job_id: str, **fields: Any) -> None:
        self.records[job_id] = self.records[job_id].model_copy(update=fields)

    def load(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def start(self, record: JobRecord, worker: str, data: Mapping[str, Any] | None = None) -> Attempt | str:
        current = self.records[record.id]
        if current.status is not JobStatus.QUEUED:
            return current.status.value
        attempts = current.attempts + 1
        self._update(record.id, status=JobStatus.RUNNING, started_at=time.time(), worker=worker, attempts=attempts)
        return Attempt(record=self.records[record.id], number=attempts, worker=worker)

    def progress_many(
        self,
        attempts: Sequence[Attempt],
        step: int,
        total: int,
        events: Sequence[Mapping[str, Any] | None],
        facts: Mapping[str, Any] | None = None,
    ) -> list[str]:
        for attempt in attempts:
            self._update(attempt.job_id, step=step, total=total)
        return ["ok"] * len(attempts)

    def succeed(self, attempt: Attempt, *, result: Mapping[str, Any], timings: Mapping[str, float], total: int) -> str:
        self._update(
            attempt.job_id, status=JobStatus.SUCCEEDED, finished_at=time.time(), result=dict(result),
            timings=dict(timings), step=total, total=total,
        )  # fmt: skip
        return "ok"

    def fail(self, attempt: Attempt, problem: ProblemType, detail: str | None, timings: Mapping[str, float]) -> str:
        error = problem_error(problem, detail)
        self._update(attempt.job_id, status=JobStatus.FAILED, finished_at=time.time(), error=error)
        print(f"job {attempt.job_id} failed: {error}", flush=True)
        return "ok"

    def cancel(self, attempt: Attempt, timings: Mapping[str, float] | None = None) -> str:
        self._update(attempt.job_id, status=JobStatus.CANCELED, finished_at=time.time())
        return "ok"


class Harness:
    """The worker's engine with its image runner on one model, fed with jobs directly."""

    def __init__(self, family: str, source: Path, out: Path, speed: Any, smoke: bool) -> None:
        from sdserve.observe.metrics import Metrics
        from sdserve.registry import ModelSpec, Registry, RegistryHolder
        from sdserve.settings import Settings
        from sdserve.storage.local import LocalStore
        from worker.engine.runner import Engine
        from worker.images.runner import ImageRunner
        from worker.models.device import DeviceConfig
        from worker.models.pipelines import PipelineCache

        self.size = (128 if family == "sdxl" else 64) if smoke else (1024 if family == "sdxl" else 512)
        spec = ModelSpec(
            name=family, source=str(source), family="sdxl" if family == "sdxl" else "sd1", native_size=self.size
        )
        registry = Registry({family: spec}, {}, family, loras={}, embeddings={})
        holder = RegistryHolder(lambda: registry)
        settings = Settings(
            device="auto", dtype="auto", data_dir=out / "data", preview_every_steps=0, worker_models=[family],
            default_model=family, _env_file=None,  # type: ignore[call-arg]
        )  # fmt: skip
        device = DeviceConfig.from_settings(settings)
        metrics = Metrics()
        self.pipelines = PipelineCache(holder, device, out / "models", speed=speed, metrics=metrics)
        started = time.perf_counter()
        self.warm_seconds = self.pipelines.warm(family)
        self.load_seconds = time.perf_counter() - started - self.warm_seconds
        self.tracker = MemoryTracker()
        runner = ImageRunner(
            settings, holder, self.pipelines, self.tracker, metrics,  # type: ignore[arg-type]
            worker_name="bench", device=device.describe(),
        )  # fmt: skip
        self.engine = Engine(
            name="bench", tracker=self.tracker, store=LocalStore(out / "objects"), runners=[runner],  # type: ignore[arg-type]
            metrics=metrics, device=device.describe(),
        )  # fmt: skip
        self.family = family
        self.pipe = self.pipelines.load(family).pipe
        self.count = 0

    def job(self, steps: int, guidance: float) -> str:
        self.count += 1
        job_id = f"bench-{self.count:06d}"
        request = {
            "task": "txt2img", "model": self.family, "prompt": f"a lighthouse at dusk, take {self.count}",
            "negative_prompt": "", "width": self.size, "height": self.size, "num_images": 1, "steps": steps,
            "guidance_scale": guidance, "scheduler": "euler", "seed": self.count, "loras": [], "style": None,
            "output": {"format": "png", "quality": 90}, "webhook": None, "metadata": {},
        }  # fmt: skip
        self.tracker.add(job_id, request, steps)
        return job_id

    def one(self, steps: int, guidance: float) -> float:
        job_id = self.job(steps, guidance)
        sync()
        started = time.perf_counter()
        outcomes = self.engine.execute([job_id])
        sync()
        assert outcomes == {job_id: JobStatus.SUCCEEDED.value}, outcomes
        return time.perf_counter() - started

    def stream(self, jobs: int, batch: int, steps: int, guidance: float) -> tuple[float, list[float]]:
        """``jobs`` queued batch-1 requests, taken ``batch`` at a time (the worker's batching): images/s, latencies."""
        ids = [self.job(steps, guidance) for _ in range(jobs)]
        created = {i: self.tracker.records[i].created_at for i in ids}
        sync()
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            chunk = ids[first : first + batch]
            outcomes = self.engine.execute(chunk)  # one call: the batch shares its forward passes
            assert outcomes == dict.fromkeys(chunk, JobStatus.SUCCEEDED.value), outcomes
        sync()
        elapsed = time.perf_counter() - started
        latencies = [(self.tracker.records[i].finished_at or 0.0) - created[i] for i in ids]
        return jobs / elapsed, latencies


def image_flops(pipe: Any, size: int, steps: int, guidance: float) -> float:
    """FLOPs of one image: ``steps`` UNet passes (a CFG pair each) plus one VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    device, dtype = unet.device, unet.dtype
    latent = size // 8
    pair = 2 if guidance > 1 else 1
    x = torch.randn(pair, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(pair, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    extra: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(pair, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * pair, device=device, dtype=dtype),
        }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, 500, encoder_hidden_states=context, **extra)
    unet_flops = counter.get_total_flops()
    vae = pipe.vae
    decode = getattr(vae.decode, "_torchdynamo_orig_callable", vae.decode)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        decode(torch.randn(1, 4, latent, latent, device=device, dtype=vae.dtype))
    return float(steps * unet_flops + counter.get_total_flops())


# --- the plain diffusers baseline ----------------------------------------------------------------------
def baseline(
    source: Path, family: str, size: int, steps: int, guidance: float, runs: int, batch: int = 1
) -> list[float]:
    """Plain diffusers: from_pretrained fp16, PyTorch SDPA, default call, one request at a time."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = cls.from_pretrained(source, torch_dtype=dtype, use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 1):
        sync()
        started = time.perf_counter()
        pipe(["a lighthouse at dusk"] * batch, width=size, height=size, num_inference_steps=steps,
             guidance_scale=guidance, generator=torch.Generator().manual_seed(i))  # fmt: skip
        sync()
        if i:  # the first call warms up
            times.append(time.perf_counter() - started)
    del pipe
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return times


# --- stages ------------------------------------------------------------------------------------------
class Results:
    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.path = out / "results.json"
        self.data: dict[str, Any] = {"meta": meta, "rows": []}
        self.save()

    def row(self, **row: Any) -> None:
        self.data["rows"].append(row)
        self.save()
        print("ROW", json.dumps(row), flush=True)

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def run_family(family: str, args: argparse.Namespace, results: Results, deadline: float) -> None:
    from worker.models.speed import SpeedOptions

    smoke = args.smoke
    steps = 4 if smoke else 25
    guidance = 7.5 if family == "sd15" else 5.0
    work = Path(tempfile.mkdtemp(prefix="sdbench-"))
    started = time.perf_counter()
    source = build(family, work, smoke)
    results.data["meta"][f"{family}_build_s"] = round(time.perf_counter() - started, 1)
    size = (128 if family == "sdxl" else 64) if smoke else (1024 if family == "sdxl" else 512)
    rate = results.data["meta"]["matmul_tflops"] * 1e12

    def left() -> float:
        return deadline - time.monotonic()

    def record(
        setting: str, latencies: list[float], images_per_s: float, flops: float, batch: int, **extra: Any
    ) -> None:
        floor = flops / rate
        results.row(
            family=family, setting=setting, batch=batch, images_per_s=round(images_per_s, 3),
            p50_s=round(pct(latencies, 0.5), 4), p95_s=round(pct(latencies, 0.95), 4),
            floor_fraction=round(images_per_s * floor, 3), **extra,
        )  # fmt: skip

    # 1. Baseline: plain diffusers, one request at a time.
    runs = 2 if smoke else (5 if family == "sd15" else 3)
    base = baseline(source, family, size, steps, guidance, runs)
    flops_holder: dict[str, float] = {}

    # 2. sdserve, eager (SDPA, channels_last), one request on an idle worker; then the batched stream.
    harness = Harness(family, source, work, SpeedOptions(channels_last=True), smoke)
    flops = image_flops(harness.pipe, size, steps, guidance)
    flops_holder["image"] = flops
    results.data["meta"][f"{family}_image_tflop"] = round(flops / 1e12, 2)
    record("plain diffusers (fp16, SDPA, one request at a time)", base, 1 / statistics.median(base), flops, 1)
    lat = [harness.one(steps, guidance) for _ in range(runs + 1)][1:]
    record("sdserve eager (SDPA, channels_last)", lat, 1 / statistics.median(lat), flops, 1,
           ratio_to_baseline=round(statistics.median(base) / statistics.median(lat), 2))  # fmt: skip
    batch = 8 if smoke else (16 if family == "sd15" else 4)
    if left() > 60:
        harness.stream(batch, batch, steps, guidance)  # warm this batch shape
        ips, lats = harness.stream(batch * 3, batch, steps, guidance)
        record(f"sdserve eager, stream of batch-1 requests, batched by {batch}", lats, ips, flops, batch,
               ratio_to_baseline=round(ips * statistics.median(base), 2))  # fmt: skip
    del harness
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    # 3. sdserve compiled (inductor + CUDA graphs, fused QKV): latency, then the batched stream.
    compile_s = 0 if smoke else (80 if family == "sd15" else 150)
    if family in args.compile and left() > compile_s * 1.5 + 30:
        mode = "default" if smoke else "reduce-overhead"
        speed = SpeedOptions(channels_last=True, fuse_qkv=True, compile_mode=mode, compile_batch_sizes=[1])
        t0 = time.perf_counter()
        harness = Harness(family, source, work, speed, smoke)
        results.data["meta"][f"{family}_compile_b1_s"] = round(time.perf_counter() - t0, 1)
        lat = [harness.one(steps, guidance) for _ in range(runs + 2)][2:]
        record(f"sdserve compiled ({mode}, fused QKV, channels_last)", lat, 1 / statistics.median(lat), flops, 1,
               ratio_to_baseline=round(statistics.median(base) / statistics.median(lat), 2),
               warmup_s=round(harness.warm_seconds, 1))  # fmt: skip
        if left() > compile_s * 1.2 + 30:
            t0 = time.perf_counter()
            harness.stream(batch, batch, steps, guidance)  # compiles this batch shape
            results.data["meta"][f"{family}_compile_b{batch}_s"] = round(time.perf_counter() - t0, 1)
            ips, lats = harness.stream(batch * 3, batch, steps, guidance)
            record(f"sdserve compiled, stream of batch-1 requests, batched by {batch}", lats, ips, flops, batch,
                   ratio_to_baseline=round(ips * statistics.median(base), 2))  # fmt: skip
        # sdserve's overhead over the bare compiled pipeline at the same batch size.
        pipe = harness.pipe
        view = harness.pipelines.load(family).view("euler")
        bare = []
        for i in range(runs + 1):
            sync()
            t0 = time.perf_counter()
            view(["x"], width=size, height=size, num_inference_steps=steps, guidance_scale=guidance,
                 output_type="pil", generator=[torch.Generator().manual_seed(i)])  # fmt: skip
            sync()
            if i:
                bare.append(time.perf_counter() - t0)
        record("bare compiled pipeline call (same weights, PIL out)", bare, 1 / statistics.median(bare), flops, 1,
               sdserve_overhead=round(statistics.median(lat) / statistics.median(bare) - 1, 3))  # fmt: skip
        del pipe, view, harness
    results.data["meta"][f"{family}_seconds"] = round(time.perf_counter() - started, 1)
    results.save()


def train_tiny_vae(seconds: float, out: Path) -> None:
    """The tiny models' VAE (tools/train_tiny_vae.py), trained here while the GPU is at hand."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "tools" / "train_tiny_vae.py"), "--seconds", str(seconds),
           "--steps", "100000", "--out", str(out / "tiny_vae")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (out / "tiny_vae.log").write_text(result.stdout[-20000:] + result.stderr[-5000:])


def table(paths: Sequence[str]) -> str:
    lines = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        meta = data["meta"]
        lines.append(f"{meta.get('device')}, torch {meta.get('torch')}, diffusers {meta.get('diffusers')}; "
                     f"measured matrix rate {meta.get('matmul_tflops')} TFLOP/s")  # fmt: skip
        lines.append("| model | setting | batch | images/s | p50 s | p95 s | of floor | vs baseline |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for row in data["rows"]:
            ratio = row.get("ratio_to_baseline", row.get("sdserve_overhead", ""))
            lines.append(
                f"| {row['family']} | {row['setting']} | {row['batch']} | {row['images_per_s']} | {row['p50_s']} "
                f"| {row['p95_s']} | {row['floor_fraction']:.0%} | {ratio} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd15", help="sd15, sdxl or both (sd15,sdxl)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--budget", type=float, default=540.0, help="wall-clock seconds; later stages are skipped")
    parser.add_argument("--compile", default="sd15,sdxl", help="families to measure compiled too ('' for none)")
    parser.add_argument("--tiny-vae-seconds", type=float, default=0.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script")
    parser.add_argument("--table", nargs="*", help="print the table of these results.json files and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers

    meta = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "family": args.family, "smoke": args.smoke,
    }  # fmt: skip
    args.compile = [f for f in args.compile.split(",") if f]
    results = Results(args.out, meta)
    if args.tiny_vae_seconds > 0:
        t0 = time.perf_counter()
        train_tiny_vae(args.tiny_vae_seconds, args.out)
        results.data["meta"]["tiny_vae_s"] = round(time.perf_counter() - t0, 1)
    results.data["meta"]["matmul_tflops"] = round(matmul_rate(args.smoke) / 1e12, 1)
    for family in args.family.split(","):
        try:
            run_family(family, args, results, deadline)
        except Exception:
            results.data["meta"][f"{family}_error"] = traceback.format_exc()[-3000:]
            results.save()
            traceback.print_exc()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(table([str(results.path)]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
