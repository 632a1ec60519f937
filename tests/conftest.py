"""Shared fixtures: a real Redis (database 15 by default), real HTTP, the real tiny pipeline.

* Redis: ``SDSERVE_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/15``. If nothing answers there and
  ``redis-server`` is installed, a private one is started for the session. The test database is
  flushed before and after the session; every test also gets its own key prefix.
* The gateway runs under uvicorn on a free loopback port in a background thread (real HTTP).
* Workers run in the test's own thread in RQ burst mode (``run_worker``), or as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sdserve.settings import Settings

TEST_REDIS_URL = os.environ.get("SDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = TEST_REDIS_URL
    proc = None
    if not _answers(url):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.exit(f"no Redis at {url} and no redis-server to start: the integration tests need one", 2)
        port = free_port()
        folder = tmp_path_factory.mktemp("redis")
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/15"
        for _ in range(100):
            if _answers(url):
                break
            time.sleep(0.05)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
    if proc is not None:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of generated built-in models for the whole session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, models_cache: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        data_dir=tmp_path / "data",
        models_cache_dir=models_cache,
        url_signing_secret="test-secret",  # type: ignore[arg-type]
        heartbeat_seconds=1,
        warmup=False,
        worker_models=["tiny", "tiny-sdxl"],
        default_model="tiny",
        unserved_models="queue",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    for key in client.scan_iter(match=f"{settings.key_prefix}:*", count=500):
        client.delete(key)
    client.close()


class LiveServer:
    """uvicorn serving an app on a loopback port from a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def gateway(settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    """The gateway's base URL (real HTTP on loopback)."""
    from app.main import create_app

    with LiveServer(create_app(settings)) as server:
        yield server.url


@pytest.fixture
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def pipelines(models_cache: Path) -> Any:
    """The tiny pipelines, loaded once per session (as a worker keeps them warm)."""
    from sdserve.registry import Registry
    from worker.device import DeviceConfig
    from worker.pipelines import PipelineCache

    registry = Registry.load(None)
    device = DeviceConfig.from_settings(Settings(device="cpu", _env_file=None))  # type: ignore[call-arg]
    return PipelineCache(registry, device, models_cache)


def run_burst(settings: Settings, connection: redis.Redis, pipelines: Any, name: str | None = None) -> Any:
    """Run a real worker (on the given warm pipelines) in this thread until its queues are empty."""
    from sdserve.keys import Keys
    from sdserve.s3store import open_store
    from sdserve.tracker import JobTracker
    from worker import jobs
    from worker.main import make_worker
    from worker.runtime import Runtime

    runtime = Runtime(
        settings=settings,
        registry=pipelines.registry,
        pipelines=pipelines,
        store=open_store(settings, signing_key=None),
        tracker=JobTracker(connection, Keys(settings.key_prefix)),
        device=pipelines.device,
        name=name or f"test-worker-{uuid.uuid4().hex[:6]}",
    )
    for model in settings.worker_models:  # loaded before it takes jobs, as `sdserve worker` does
        pipelines.load(model)
    jobs.install(runtime)
    try:
        worker = make_worker(settings, connection, runtime)
        worker.work(burst=True, logging_level="WARNING")
        return worker
    finally:
        jobs.install(None)


@contextmanager
def background_worker(settings: Settings, connection: redis.Redis, pipelines: Any) -> Iterator[None]:
    """A real worker that keeps taking jobs (RQ burst after burst) until the block ends."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                run_burst(settings, connection, pipelines)
            except BaseException as exc:
                failures.append(exc)
                return
            stop.wait(0.1)

    thread = threading.Thread(target=loop, name="background-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(120)
    assert not failures, failures


@pytest.fixture
def run_worker(settings: Settings, pipelines: Any, redis_client: redis.Redis) -> Callable[..., Any]:
    """Run a real worker in this thread until the queues are empty (RQ burst mode)."""

    def run(name: str | None = None) -> Any:
        return run_burst(settings, redis_client, pipelines, name)

    return run


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
