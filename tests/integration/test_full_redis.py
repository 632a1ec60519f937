"""A full Redis (maxmemory, noeviction) answers 503 with Retry-After, never 500, and nothing half-made stays.
A private redis-server with a small maxmemory, filled to it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.settings import Settings
from tests.conftest import LiveServer, free_port

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
         "--maxmemory", "64mb", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def fill(url: str) -> None:
    """Ballast past the point of no room: maxmemory is set below what Redis holds (noeviction)."""
    client = redis.Redis.from_url(url)
    try:
        for i in range(40):
            client.set(f"ballast:{i}", b"\0" * 100_000)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 1_000_000)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", "1")
    finally:
        client.close()


def test_a_full_redis_answers_503_with_retry_after(settings: Settings, full_redis: str) -> None:
    local = settings.model_copy(update={"redis_url": full_redis})
    with LiveServer(create_app(local)) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/v1/txt2img", json=BODY).status_code == 202  # room: accepted
        fill(full_redis)
        for body in (BODY, {**BODY, "seed": 3}):
            answer = client.post("/v1/txt2img", json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json()["type"] == "/problems/unavailable" and int(answer.headers["retry-after"]) > 0
            assert "full" in answer.json()["detail"]
        upload = client.post("/v1/uploads", files={"file": ("x.png", b"\x89PNG", "image/png")})
        assert upload.status_code in (422, 503)  # refused for its bytes before Redis is asked, or 503: never 500
        listed = client.get("/v1/jobs").json()["data"]
        assert len(listed) == 1  # the refused submits left no record behind
