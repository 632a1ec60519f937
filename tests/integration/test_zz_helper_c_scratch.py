from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.integration.test_job_control import BODY, worker_in_background


@pytest.mark.parametrize("n", range(6))
def test_wait(n: int, client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any) -> None:
    queue = Keys(settings.key_prefix).queue_key("tiny")
    with worker_in_background(settings, redis_client, pipelines, start_when=lambda: redis_client.llen(queue)):
        started = time.monotonic()
        answer = client.post("/v1/txt2img", json=BODY, headers={"Prefer": "wait=20"}, timeout=25)
    print(n, answer.status_code, answer.json()["status"], time.monotonic() - started)
    assert answer.status_code == 200
