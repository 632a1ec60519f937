"""The server's clock, not each machine's: processes whose wall clocks disagree still agree on every deadline.

The skew is real: the janitor and a second gateway run with their own ``time.time`` moved by minutes (the
clock a process is given, injected), and nothing that spans processes may depend on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sdserve.access.api_keys import hash_key
from sdserve.jobs.janitor import Janitor
from sdserve.jobs.presence import WorkerPresence, advertise
from sdserve.jobs.record import from_hash
from sdserve.jobs.tracker import Attempt, JobTracker
from sdserve.keys import Keys
from sdserve.observe.metrics import Metrics
from sdserve.settings import Settings
from tests.conftest import LiveServer, free_port, wait_for

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}


def test_a_janitor_ten_minutes_ahead_leaves_a_healthy_job_alone(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(settings.key_prefix)
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    record = from_hash(redis_client.hgetall(keys.job(job_id)))
    assert redis_client.lrem(keys.queue_key("tiny"), 1, job_id) == 1
    advertise(redis_client, keys, WorkerPresence(name="alive.1", queues=["tiny"], heartbeat_seconds=30))
    assert isinstance(JobTracker(redis_client, keys, job_ttl=3600).start(record, "alive.1"), Attempt)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 600)  # the janitor's machine is 10 minutes ahead
    janitor = Janitor(redis_client, keys, max_attempts=3, job_ttl=3600, metrics=Metrics())
    assert janitor.sweep()
    monkeypatch.setattr(time, "time", real)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["error"] is None  # its worker is alive and within its timeout


SKEWED_GATEWAY = """
import sys, time
real = time.time
time.time = lambda: real() + float(sys.argv[1])
from sdserve.cli.main import main
main(["gateway"])
"""


@pytest.fixture
def two_gateways(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """Two gateways on one Redis, the second with its wall clock 120 s behind, and an API key limited to
    a burst of 30 and one job a minute."""
    from app.main import create_app

    key = "sk_test_clock"
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.clock]\nsha256 = "{hash_key(key)}"\nrate_per_minute = 1\nburst = 30\n')
    limited = settings.model_copy(update={"api_keys_file": keys_file})
    port = free_port()
    env = {
        **os.environ, "SDSERVE_REDIS_URL": settings.redis_url, "SDSERVE_KEY_PREFIX": settings.key_prefix,
        "SDSERVE_DATA_DIR": str(settings.data_dir), "SDSERVE_API_KEYS_FILE": str(keys_file),
        "SDSERVE_PORT": str(port), "SDSERVE_URL_SIGNING_SECRET": "test-secret", "SDSERVE_UNSERVED_MODELS": "queue",
        "SDSERVE_DEFAULT_MODEL": "tiny", "SDSERVE_LOG_LEVEL": "warning",
    }  # fmt: skip
    skewed = subprocess.Popen([sys.executable, "-c", SKEWED_GATEWAY, "-120"], env=env)
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), timeout=60)
        with LiveServer(create_app(limited)) as server:
            yield server.url, f"http://127.0.0.1:{port}", key
    finally:
        skewed.terminate()
        skewed.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_gateways_whose_clocks_disagree_share_one_rate_limit(two_gateways: tuple[str, str, str]) -> None:
    fair, skewed, key = two_gateways
    headers = {"Authorization": f"Bearer {key}"}
    allowed = 0
    for i in range(200):
        url = fair if i % 2 == 0 else skewed
        answer = httpx.post(f"{url}/v1/txt2img", json=BODY, headers=headers, timeout=10)
        assert answer.status_code in (202, 429), answer.text
        allowed += answer.status_code == 202
    # A burst of 30, refilled at one a minute: the test takes seconds, so at most one more comes in.
    assert 30 <= allowed <= 31, allowed


def test_live_workers_are_judged_by_redis_not_by_the_gateway_clock(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(settings.key_prefix)
    advertise(redis_client, keys, WorkerPresence(name="w.1", queues=["tiny"], models=["tiny"], heartbeat_seconds=5))
    models: Any = client.get("/v1/models").json()["data"]
    assert next(m for m in models if m["name"] == "tiny")["workers"] == ["w.1"]
    redis_client.delete(keys.worker("w.1"))  # its presence expired (Redis's TTL): it is gone, whatever clocks say
    models = client.get("/v1/models").json()["data"]
    assert next(m for m in models if m["name"] == "tiny")["workers"] == []
