"""`sdserve up` as a user runs it: a subprocess, real HTTP, Ctrl-C to stop."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SDSERVE = str(Path(sys.executable).with_name("sdserve"))


def start(env_overrides: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "up.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_overrides}
    proc = subprocess.Popen(
        [SDSERVE, "up"], cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )
    return proc, log


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def generate(base: str) -> dict[str, Any]:
    body = b'{"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 12}'
    # Exactly what the README's curl sends (curl -d labels it as a form).
    created = httpx.post(
        f"{base}/v1/txt2img", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert created.status_code == 202, created.text
    location = created.headers["location"]
    statuses = []

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(location).json()
        statuses.append((job["status"], (job["progress"] or {}).get("step")))
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    job = wait_for(finished, timeout=120, interval=0.02)
    assert job["status"] == "succeeded", job
    assert statuses[0][0] in ("queued", "running")
    return job


def test_up_serves_the_readme_example_and_stops_cleanly(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    prefix = f"e{uuid.uuid4().hex[:8]}"
    proc, log = start(
        {
            "SDSERVE_PORT": str(port),
            "SDSERVE_REDIS_URL": redis_url,
            "SDSERVE_KEY_PREFIX": prefix,
            "SDSERVE_LOG_LEVEL": "warning",
        },
        tmp_path,
    )
    try:
        wait_for(lambda: "ready." in log.read_text() or proc.poll() is not None, timeout=180, interval=0.2)
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        base = f"http://127.0.0.1:{port}"
        job = generate(base)
        image = httpx.get(job["images"][0]["url"])
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)
        assert (tmp_path / "data" / "objects" / "outputs" / job["id"] / "0.png").is_file()
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_up_starts_its_own_redis_when_none_answers(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port, redis_port = free_port(), free_port()
    proc, log = start(
        {
            "SDSERVE_PORT": str(port),
            "SDSERVE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "SDSERVE_LOG_LEVEL": "warning",
        },
        tmp_path,
    )
    try:
        wait_for(lambda: "ready." in log.read_text() or proc.poll() is not None, timeout=180, interval=0.2)
        assert proc.poll() is None, log.read_text()
        assert f"started redis-server on 127.0.0.1:{redis_port}" in log.read_text()
        assert redis.Redis(port=redis_port).config_get("appendonly")["appendonly"] == "yes"
        generate(f"http://127.0.0.1:{port}")
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    time.sleep(0.2)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()


def test_up_explains_how_to_get_redis_when_it_is_missing(tmp_path: Path) -> None:
    env_path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "redis-server").exists()
    )
    result = subprocess.run(
        [SDSERVE, "up"],
        cwd=tmp_path,
        env={**os.environ, "PATH": env_path, "SDSERVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "redis-server" in result.stdout and "apt install redis-server" in result.stdout
