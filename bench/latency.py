"""End-to-end latency of one job on an idle service, beside the bare pipeline doing the same work.

Starts `sdserve up` (tiny model, this machine's CPU) in a subprocess with its own data folder and key
prefix. Then, alternating so that both see the same machine state, it runs N jobs through the service
(submit → `succeeded` → image downloaded; completion is observed by blocking on the job's event stream,
so the client burns no CPU polling) and N bare diffusers pipeline calls in this process (same model,
size, steps and seed, PIL output). Prints one table.

    python bench/latency.py [--jobs 20] [--size 256] [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from sdserve.contract.lifecycle import TERMINAL_EVENTS
from sdserve.keys import Keys

TERMINAL = {event.value.encode() for event in TERMINAL_EVENTS}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Service:
    """`sdserve up` in a subprocess."""

    def __init__(self, data: Path) -> None:
        self.port = 18000 + os.getpid() % 1000
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.data = data
        env = {
            # no metrics endpoints (another sdserve on this host may hold their ports), unless asked for
            "SDSERVE_WORKER_METRICS_PORT": "0",
            "SDSERVE_DISPATCHER_METRICS_PORT": "0",
            **os.environ,
            "SDSERVE_PORT": str(self.port),
            "SDSERVE_DATA_DIR": str(data),
            "SDSERVE_KEY_PREFIX": self.prefix,
            "SDSERVE_LOG_LEVEL": "warning",
        }
        log = (data / "up.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "sdserve.cli", "up"], env=env, stdout=log, stderr=log)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while "ready." not in (data / "up.log").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((data / "up.log").read_text())
            time.sleep(0.2)
        self.client = httpx.Client(timeout=60)
        self.redis = redis.Redis.from_url(  # reads block for 10 s: longer than redis-py's default socket timeout
            os.environ.get("SDSERVE_REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=30
        )
        self.keys = Keys(self.prefix)

    def run(self, body: dict[str, Any]) -> tuple[float, float, float, dict[str, Any]]:
        t0 = time.perf_counter()
        job = self.client.post(f"{self.base}/v1/txt2img", json=body).json()
        t_submit = time.perf_counter() - t0
        last = "0"
        while True:
            entries = self.redis.xread({self.keys.events(job["id"]): last}, block=10_000)
            done = False
            for _, items in entries:
                for entry_id, fields in items:
                    last = entry_id
                    done = done or fields[b"event"] in TERMINAL
            if done:
                break
        t_done = time.perf_counter() - t0
        job = self.client.get(f"{self.base}/v1/jobs/{job['id']}").json()
        self.client.get(job["images"][0]["url"]).raise_for_status()
        return t_submit, t_done, time.perf_counter() - t0, job

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from worker.models.builtin import ensure_builtin

    body = {
        "model": "tiny",
        "prompt": "a lighthouse at dusk",
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "seed": 1,
    }
    rows: dict[str, list[float]] = {k: [] for k in ("bare", "submit", "done", "image", "run", "inference")}
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            pipe = StableDiffusionPipeline.from_pretrained(ensure_builtin("tiny", Path(tmp) / "models"))
            pipe.set_progress_bar_config(disable=True)
            for i in range(args.jobs + 2):
                t0 = time.perf_counter()
                pipe(
                    "a lighthouse at dusk",
                    width=args.size,
                    height=args.size,
                    num_inference_steps=args.steps,
                    generator=torch.Generator().manual_seed(1),
                )
                bare = time.perf_counter() - t0
                submit, done, image, job = service.run(body)
                if i < 2:  # warm-up
                    continue
                rows["bare"].append(bare)
                rows["submit"].append(submit)
                rows["done"].append(done)
                rows["image"].append(image)
                rows["run"].append(job["timings"]["run_ms"] / 1000)
                rows["inference"].append((job["timings"]["inference_ms"] + job["timings"]["decode_ms"]) / 1000)
        finally:
            service.stop()

    labels = {
        "bare": "bare diffusers pipeline call (PIL out)",
        "inference": "worker: denoise + decode (same work)",
        "run": "worker: whole job (+ PNG, store, record)",
        "submit": "client: POST answered (202)",
        "done": "client: submit → succeeded event",
        "image": "client: submit → image downloaded",
    }
    print(
        f"tiny {args.size}x{args.size}, {args.steps} steps, {args.jobs} sequential jobs on an idle worker, "
        f"alternating with the bare pipeline; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(f"| {'what':42} | p50 ms | p95 ms | mean ms |")
    print(f"|{'-' * 44}|-------:|-------:|--------:|")
    for key in ("bare", "inference", "run", "submit", "done", "image"):
        values = rows[key]
        print(
            f"| {labels[key]:42} | {pct(values, 0.5) * 1000:6.0f} | {pct(values, 0.95) * 1000:6.0f} | "
            f"{statistics.mean(values) * 1000:7.0f} |"
        )


if __name__ == "__main__":
    main()
