"""A training survives its worker: killed (SIGKILL) mid-training, it resumes on another worker from the last
checkpoint a progress event named (the events say from which step), loses at most ``checkpoint_every`` steps,
and ends with a usable adapter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from sdserve.jobs.janitor import Janitor
from sdserve.keys import Keys
from sdserve.observe.metrics import Metrics
from sdserve.settings import Settings
from tests.conftest import run_burst, wait_for, worker_env
from tests.integration.test_trainings import dataset_zip

SDSERVE = [sys.executable, "-m", "sdserve.cli"]


def events(client: redis.Redis, settings: Settings, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    raw = client.xrange(Keys(settings.key_prefix).events(job_id))
    return [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in raw]


def test_a_killed_training_resumes_from_its_last_checkpoint_on_another_worker(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any, tmp_path: Path
) -> None:
    files = {"file": ("set.zip", dataset_zip(), "application/zip")}
    dataset = client.post("/v1/uploads", files=files, data={"kind": "dataset"}).json()["id"]
    every = 20
    body = {
        "method": "lora", "base_model": "tiny", "name": "zwx-resumed", "dataset": dataset, "trigger_word": "zwx",
        "hyperparameters": {"steps": 120, "batch_size": 1, "rank": 4, "resolution": 64, "checkpoint_every": every},
    }  # fmt: skip
    training = client.post("/v1/trainings", json=body).json()
    keys = Keys(settings.key_prefix)
    log = (tmp_path / "worker.log").open("w")
    env = worker_env(settings, TRAINING_MODELS="tiny")
    worker = subprocess.Popen([*SDSERVE, "worker"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        wait_for(
            lambda: any("checkpoint" in data and data["step"] >= 2 * every
                        for _, data in events(redis_client, settings, training["id"])),
            timeout=240, interval=0.05,
        )  # fmt: skip
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed_at = int(redis_client.hget(keys.job(training["id"]), "step") or 0)
    named = max(d["checkpoint"]["step"] for _, d in events(redis_client, settings, training["id"]) if "checkpoint" in d)
    assert client.get(f"/v1/trainings/{training['id']}").json()["status"] == "running"
    janitor = Janitor(redis_client, keys, max_attempts=3, job_ttl=settings.job_ttl_seconds, metrics=Metrics())

    def requeued() -> bool:  # once the dead worker's presence expired
        janitor.sweep()
        return redis_client.hget(keys.job(training["id"]), "status") == b"queued"

    wait_for(requeued, timeout=60, interval=0.5)
    trainer = settings.model_copy(update={"worker_models": ["tiny"], "training_models": ["tiny"]})
    run_burst(trainer, redis_client, pipelines)
    done = client.get(f"/v1/trainings/{training['id']}").json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["resumed_from_step"] == named and done["progress"]["step"] == 120
    assert killed_at - named <= every  # lost at most one checkpoint interval
    resumed = [d for name, d in events(redis_client, settings, training["id"]) if d.get("resumed_from_step")]
    assert resumed and resumed[0]["resumed_from_step"] == named
    assert redis_client.hget(keys.job(training["id"]), "attempts") == b"2"
    manifest = httpx.get(done["manifest_url"]).json()
    assert manifest["resumed_from_step"] == named
    assert "zwx-resumed" in json.dumps(client.get("/v1/loras").json())
