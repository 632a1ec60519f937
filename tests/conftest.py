"""Shared fixtures: a real Redis, real HTTP, the real tiny pipelines; tiers by folder; parallel with xdist.

* Tiers: every test carries exactly one tier marker, given by its folder (``TIERS``): ``pytest -m unit`` runs
  the pure tests (no server, no pipeline) in well under a minute; the others start what they need.
* Redis: ``SDSERVE_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/15``. Each xdist worker takes a database of
  its own, counting down from that one (gw0: 15, gw1: 14, ...), flushed when the worker starts; every test
  also gets its own key prefix. If nothing answers and ``redis-server`` is installed, a private one is started.
* The gateway runs under uvicorn on a free loopback port in a background thread (real HTTP).
* Workers run in the test's own thread in RQ burst mode (``run_worker``), in a background thread
  (``background_worker``), or as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from sdserve.settings import Settings

TEST_REDIS_URL = os.environ.get("SDSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

TIERS = {
    "unit": "unit",
    "deploy": "deploy",
    "integration": "integration",
    "store": "store",
    "worker": "integration",
    "sdk": "sdk",
    "fuzz": "fuzz",
    "browser": "browser",
    "demo": "demo",
    "e2e": "e2e",
    "chaos": "chaos",
    "gpu": "gpu",
}
"""Test folder → its tier marker."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's tier (a test outside the tier folders is a mistake)."""
    root = Path(__file__).parent
    for item in items:
        folder = Path(str(item.fspath)).relative_to(root).parts[0]
        if folder not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder ({', '.join(TIERS)})")
        item.add_marker(getattr(pytest.mark, TIERS[folder]))


def xdist_worker_index() -> int:
    """0 outside xdist; n for worker ``gw<n>``."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


def pytest_configure(config: pytest.Config) -> None:
    # Parallel workers share the cores: one torch thread each, or they only fight over the CPU.
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import torch
        except ImportError:  # the gateway-only installs
            return
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = TEST_REDIS_URL
    proc = None
    if not _answers(base):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.exit(f"no Redis at {base} and no redis-server to start: the integration tests need one", 2)
        port = free_port()
        folder = tmp_path_factory.mktemp("redis")
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        base = f"redis://127.0.0.1:{port}/15"
        for _ in range(100):
            if _answers(base):
                break
            time.sleep(0.05)
    db = int(urlsplit(base).path.strip("/") or 15) - xdist_worker_index()
    url = _with_db(base, db)
    client = redis.Redis.from_url(url)
    client.flushdb()  # this worker's own database
    yield url
    client.flushdb()
    client.close()
    if proc is not None:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of generated built-in models for the whole session (shared by the xdist workers)."""
    shared = os.environ.get("SDSERVE_TEST_MODELS_DIR")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        return Path(shared)
    return tmp_path_factory.getbasetemp().parent / "models"


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
        worker_metrics_port=0,
        dispatcher_metrics_port=0,
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

    def __init__(self, app: Any, **options: Any) -> None:
        """``options``: more uvicorn options (``app.server.server_options`` gives the gateway's own)."""
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", server_header=False, **options
        )
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
    from sdserve.registry import Registry, RegistryHolder
    from worker.models.device import DeviceConfig
    from worker.models.pipelines import PipelineCache

    holder = RegistryHolder(lambda: Registry.load(None, "tiny"))
    device = DeviceConfig.from_settings(Settings(device="cpu", _env_file=None))  # type: ignore[call-arg]
    return PipelineCache(holder, device, models_cache)


def worker_parts(settings: Settings, pipelines: Any, name: str | None = None) -> Any:
    """A warm worker's parts on the session's pipelines (what `sdserve worker` builds at start)."""
    from sdserve.observe.metrics import Metrics
    from worker.main import WorkerParts

    for model in settings.worker_models:  # loaded before it takes jobs, as `sdserve worker` does
        pipelines.load(model)
    return WorkerParts(
        settings=settings,
        holder=pipelines.holder,
        pipelines=pipelines,
        device=pipelines.device,
        metrics=Metrics(),
        name=name or f"test-worker-{uuid.uuid4().hex[:6]}",
    )


def run_burst(
    settings: Settings, connection: redis.Redis, pipelines: Any, name: str | None = None, runners: Sequence[Any] = ()
) -> Any:
    """Run a real worker (on the given warm pipelines) in this thread until its queues are empty."""
    from worker.engine import slot
    from worker.main import make_worker

    worker = make_worker(worker_parts(settings, pipelines, name), connection, runners)
    try:
        worker.work(burst=True, logging_level="WARNING")
        return worker
    finally:
        slot.install(None)


@contextmanager
def background_worker(
    settings: Settings, connection: redis.Redis, pipelines: Any, runners: Sequence[Any] = ()
) -> Iterator[None]:
    """A real worker that keeps taking jobs (RQ burst after burst) until the block ends."""
    stop = threading.Event()
    failures: list[BaseException] = []
    for model in settings.worker_models:  # warm before the block starts, as `sdserve worker` is before it takes jobs
        pipelines.load(model)

    def loop() -> None:
        while not stop.is_set():
            try:
                run_burst(settings, connection, pipelines, runners=runners)
            except BaseException as exc:
                failures.append(exc)
                return
            stop.wait(0.05)

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

    def run(name: str | None = None, runners: Sequence[Any] = ()) -> Any:
        return run_burst(settings, redis_client, pipelines, name, runners)

    return run


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of an ``sdserve worker`` subprocess on these settings (none of this shell's SDSERVE_*),
    serving ``tiny`` on the CPU; ``overrides`` by setting name (``HEARTBEAT_SECONDS="0.5"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    defaults = {
        "REDIS_URL": settings.redis_url, "KEY_PREFIX": settings.key_prefix, "DATA_DIR": str(settings.data_dir),
        "MODELS_CACHE_DIR": str(settings.models_dir), "WORKER_MODELS": "tiny", "WARMUP": "false",
        "HEARTBEAT_SECONDS": "1", "LOG_LEVEL": "warning", "TORCH_THREADS": "1", "DEVICE": "cpu",
        "WORKER_METRICS_PORT": "0",  # other workers may run on this host
    }  # fmt: skip
    return env | {f"SDSERVE_{name}": value for name, value in (defaults | overrides).items()}


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
