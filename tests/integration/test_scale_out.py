"""Scale-out on one machine: several `sdserve worker` processes on one queue.

Workers are real subprocesses (`sdserve worker`, the tiny model on the CPU, one torch thread each)
sharing one Redis queue and one store; jobs go in through the real gateway. Every job must run exactly
once (one start, one attempt, one result), and both workers take their share of the one queue.

How much faster two workers are than one is a measurement, not a test: ``bench/scale_out.py`` (figures in
``docs/benchmarks.md``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from sdserve.images.view import ImageJobResult
from sdserve.jobs.presence import live_workers
from sdserve.jobs.record import JobRecord, from_hash
from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import wait_for

SDSERVE = [sys.executable, "-m", "sdserve.cli"]
"""The `sdserve` command, as `sdserve up` starts its children."""
JOBS_PER_BURST = 16
REQUEST = {"prompt": "a lighthouse, scaled out", "width": 64, "height": 64, "steps": 8}
TERMINAL = {b"succeeded", b"failed", b"canceled"}


def worker_env(settings: Settings, models_cache: Path, name: str, metrics_port: int = 0) -> dict[str, str]:
    """The environment of one `sdserve worker` of the test's deployment (and nothing else of sdserve's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    return env | {
        "SDSERVE_REDIS_URL": settings.redis_url,
        "SDSERVE_KEY_PREFIX": settings.key_prefix,
        "SDSERVE_DATA_DIR": str(settings.data_dir),
        "SDSERVE_MODELS_CACHE_DIR": str(models_cache),
        "SDSERVE_WORKER_NAME": name,
        "SDSERVE_WORKER_MODELS": "tiny",
        "SDSERVE_DEVICE": "cpu",
        "SDSERVE_TORCH_THREADS": "1",
        "SDSERVE_WARMUP": "false",
        "SDSERVE_HEARTBEAT_SECONDS": "1",
        "SDSERVE_LOG_LEVEL": "warning",
        "SDSERVE_HOST": "127.0.0.1",
        "SDSERVE_WORKER_METRICS_PORT": str(metrics_port),  # 0: none (other workers may run on this host)
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


class Workers:
    """`sdserve worker` subprocesses for one deployment (prefix, Redis, store, models cache)."""

    def __init__(self, settings: Settings, models_cache: Path, folder: Path, client: redis.Redis) -> None:
        self.settings = settings
        self.models_cache = models_cache
        self.folder = folder
        self.redis = client
        self.keys = Keys(settings.key_prefix)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        """Start workers (at once: they warm up side by side) and wait until each is ready."""
        for name in names:
            self._spawn(name)
        for name in names:
            wait_for(lambda name=name: self.ready(name) or self.exited(name), timeout=180)
            assert not self.exited(name), self.log(name)

    def _spawn(self, name: str) -> None:
        env = worker_env(self.settings, self.models_cache, name)
        log = (self.folder / f"{name}.log").open("wb")
        # The working directory is empty: no stray .env is read.
        self.procs[name] = subprocess.Popen(
            [*SDSERVE, "worker"],
            cwd=self.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self, name: str) -> bool:
        """Whether the worker started as ``name`` is ready (it registers as ``<name>.<pid>.<random>``)."""
        full = f"{name}.{self.procs[name].pid}."
        return any(n.startswith(full) and w.ready for n, w in live_workers(self.redis, self.keys).items())

    def exited(self, name: str) -> bool:
        return self.procs[name].poll() is not None

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self, name: str) -> None:
        """SIGTERM: RQ's warm shutdown (an idle worker exits at once, a busy one after its job)."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"worker {name} ignored SIGTERM")
        gone = f"{name}.{proc.pid}."
        wait_for(lambda: not any(n.decode().startswith(gone) for n in self.redis.zrange(self.keys.workers(), 0, -1)))

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def short(worker: str | None) -> str:
    """The name a worker was started as (``w1`` of ``w1.<pid>.<random>``)."""
    return (worker or "").split(".", 1)[0]


def burst(client: httpx.Client, workers: Workers, n: int) -> tuple[float, list[JobRecord]]:
    """Submit n jobs at once; return the wall time until the last one finished, and the records."""
    keys = workers.keys
    started = time.time()
    ids = []
    for _ in range(n):
        response = client.post("/v1/txt2img", json=REQUEST)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    def finished() -> bool:
        with workers.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            return all(status in TERMINAL for status in pipe.execute())

    wait_for(finished, timeout=300, interval=0.25)  # a slow poll: the workers need the CPU
    records = [from_hash(workers.redis.hgetall(keys.job(job_id))) for job_id in ids]
    assert all(r.finished_at is not None for r in records)
    return max(r.finished_at or 0.0 for r in records) - started, records


def warm(client: httpx.Client, workers: Workers, names: set[str]) -> list[JobRecord]:
    """Small bursts until every named worker has run a job (the first job of a process is slower)."""
    seen: set[str] = set()
    records: list[JobRecord] = []
    for _ in range(6):
        _, batch = burst(client, workers, 2 * len(names))
        records += batch
        seen |= {short(r.worker) for r in batch}
        if names <= seen:
            return records
    pytest.fail(f"workers {names - seen} never took a job")


def test_every_job_runs_once_and_two_workers_share_one_queue(
    client: httpx.Client,
    settings: Settings,
    redis_client: redis.Redis,
    models_cache: Path,
    tmp_path: Path,
) -> None:
    workers = Workers(settings, models_cache, tmp_path, redis_client)
    every: list[JobRecord] = []
    try:
        workers.start("w1", "w2")
        every += warm(client, workers, {"w1", "w2"})
        _, records = burst(client, workers, JOBS_PER_BURST)
        every += records
        ran = Counter(short(r.worker) for r in records)
        assert set(ran) == {"w1", "w2"}, ran
        assert min(ran.values()) >= JOBS_PER_BURST // 4, ran  # both take their share of the one queue
    finally:
        workers.stop_all()

    # Every job ran exactly once: one successful end, one attempt, one start event, one image.
    assert len({r.id for r in every}) == len(every)
    for record in every:
        assert record.status.value == "succeeded", (record.id, record.error)
        assert record.attempts == 1, record.id
        assert short(record.worker) in {"w1", "w2"}
        assert len(ImageJobResult.model_validate(record.result).images) == 1
        events = redis_client.xrange(workers.keys.events(record.id))
        assert [e[b"event"] for _, e in events].count(b"started") == 1, record.id


def test_a_worker_whose_metrics_port_is_taken_exits_naming_the_setting(
    settings: Settings, redis_client: redis.Redis, models_cache: Path, tmp_path: Path
) -> None:
    with socket.socket() as held:  # the first worker on this host has the port
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        second = subprocess.run(
            [*SDSERVE, "worker"],
            cwd=tmp_path,
            env=worker_env(settings, models_cache, "second", metrics_port=port),
            capture_output=True,
            timeout=120,
            check=False,
        )
    out = (second.stdout + second.stderr).decode(errors="replace")
    assert second.returncode != 0, out
    assert "SDSERVE_WORKER_METRICS_PORT" in out and str(port) in out, out
    assert live_workers(redis_client, Keys(settings.key_prefix)) == {}  # it never took a job
