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

from sdserve.jobs.presence import live_workers
from sdserve.keys import Keys
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
SDSERVE = [sys.executable, "-m", "sdserve.cli"]
"""`sdserve` (``sdserve.cli.main:main``, the console script's entry point), whatever scripts are installed."""


def start(env_overrides: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "up.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_overrides}
    proc = subprocess.Popen(
        [*SDSERVE, "up"], cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
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


def test_up_starts_its_own_redis_serves_the_readme_example_and_stops_cleanly(tmp_path: Path) -> None:
    """The README's first command on a machine where no Redis answers: `sdserve up` starts one (append-only),
    serves the README's curl example on the default model, and Ctrl-C stops everything it started.
    (With a Redis that answers, ``test_up_starts_a_worker_that_exits_again_with_backoff`` uses it.)"""
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
        text = log.read_text()
        assert f"started redis-server on 127.0.0.1:{redis_port}" in text
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        assert redis.Redis(port=redis_port).config_get("appendonly")["appendonly"] == "yes"
        job = generate(f"http://127.0.0.1:{port}")
        image = httpx.get(job["images"][0]["url"])
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)
        assert (tmp_path / "data" / "objects" / "outputs" / job["id"] / "1" / "0.png").is_file()  # attempt 1
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    time.sleep(0.2)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()


def test_up_explains_how_to_get_redis_when_it_is_missing(tmp_path: Path) -> None:
    env_path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "redis-server").exists()
    )
    result = subprocess.run(
        [*SDSERVE, "up"],
        cwd=tmp_path,
        env={**os.environ, "PATH": env_path, "SDSERVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "redis-server" in result.stdout and "apt install redis-server" in result.stdout


def ended(location: str) -> dict[str, Any] | None:
    job: dict[str, Any] = httpx.get(location).json()
    return job if job["status"] in ("succeeded", "failed", "canceled") else None


def worker_children(pid: int) -> list[int]:
    """The `sdserve worker` children of a process (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for child in map(int, children):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"sdserve.cli" in argv and b"worker" in argv:
            found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker child through /proc")
def test_up_starts_a_worker_that_exits_again_with_backoff(tmp_path: Path, redis_url: str, models_cache: Path) -> None:
    """A drained worker (admin drain, open mode) is started again, and so is the new one when it is killed,
    after a longer pause; `sdserve up` says so each time; a job still runs afterwards; Ctrl-C stops everything."""
    port = free_port()
    prefix = f"e{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    proc, log = start(
        {
            "SDSERVE_PORT": str(port),
            "SDSERVE_REDIS_URL": redis_url,
            "SDSERVE_KEY_PREFIX": prefix,
            "SDSERVE_LOG_LEVEL": "warning",
            "SDSERVE_WORKER_MODELS": "tiny",
            "SDSERVE_DEFAULT_MODEL": "tiny",
            "SDSERVE_WARMUP": "false",
            "SDSERVE_MODELS_CACHE_DIR": str(models_cache),
            "SDSERVE_HEARTBEAT_SECONDS": "1",
            "SDSERVE_WORKER_METRICS_PORT": "0",  # no fixed ports: other runs may share the machine
            "SDSERVE_DISPATCHER_METRICS_PORT": "0",
        },
        tmp_path,
    )
    client = redis.Redis.from_url(redis_url)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "ready." in log.read_text() or proc.poll() is not None, timeout=180, interval=0.2)
        assert proc.poll() is None, log.read_text()
        (first,) = [name for name, w in live_workers(client, keys).items() if w.ready]
        (first_pid,) = worker_children(proc.pid)

        drained = httpx.post(f"{base}/v1/admin/drain", json={}, timeout=10)
        assert drained.status_code == 200, drained.text
        assert drained.json() == {"workers": [first]}
        # Started again after the first pause; killed outright while it starts: the next pause is longer.
        second_pid = wait_for(lambda: [p for p in worker_children(proc.pid) if p != first_pid], timeout=90)[0]
        assert "the worker exited (code 0); starting it again in 1s (restart 1)" in log.read_text()
        os.kill(second_pid, signal.SIGKILL)
        third_pid = wait_for(
            lambda: [p for p in worker_children(proc.pid) if p not in (first_pid, second_pid)], timeout=90
        )[0]
        text = log.read_text()
        assert f"the worker exited (code {-signal.SIGKILL}); starting it again in 2s (restart 2)" in text, text

        third = wait_for(
            lambda: [name for name, w in live_workers(client, keys).items() if w.ready and name != first],
            timeout=180,
            interval=0.2,
        )[0]
        assert proc.poll() is None and worker_children(proc.pid) == [third_pid]
        small = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
        created = httpx.post(f"{base}/v1/txt2img", json=small)
        assert created.status_code == 202, created.text
        job = wait_for(lambda: ended(created.headers["location"]), timeout=120, interval=0.1)
        assert job["status"] == "succeeded", job["error"]  # the restarted worker takes jobs
        assert client.hget(keys.job(job["id"]), "worker") == third.encode()
        image = httpx.get(job["images"][0]["url"])
        assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (64, 64)
    finally:
        code = stop(proc)
        client.close()
    text = log.read_text()
    assert code == 0, text
    assert "stopped" in text and text.count("starting it again") == 2, text
    assert "exited unexpectedly" not in text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=2)
