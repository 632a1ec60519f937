"""The worker process: warm the models, then take jobs until told to stop.

SIGTERM (or Ctrl-C) is a warm shutdown: the running job finishes, nothing new is taken.
"""

from __future__ import annotations

import logging
import time
import warnings

import redis
import torch
from rq.serializers import JSONSerializer

from sdserve.janitor import Janitor
from sdserve.keys import Keys
from sdserve.logs import configure_logging
from sdserve.metrics import serve_metrics
from sdserve.queue import rq_queue
from sdserve.redischeck import warn_about_redis
from sdserve.registry import Registry
from sdserve.s3store import open_store
from sdserve.settings import Settings
from sdserve.tracing import setup_tracing
from sdserve.tracker import JobTracker, retrying
from worker import jobs
from worker.batching import Batcher
from worker.device import DeviceConfig
from worker.pipelines import PipelineCache
from worker.rqworker import SdWorker
from worker.runtime import Runtime, worker_name
from worker.speed import SpeedOptions, use_compile_cache

log = logging.getLogger("sdserve.worker")


def quiet_libraries() -> None:
    """Keep progress bars and deprecation chatter out of the worker's JSON log lines."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def build_runtime(settings: Settings, connection: redis.Redis, name: str) -> Runtime:
    """Load and warm every model this worker serves; the runtime is ready when this returns."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    registry = Registry.load(settings.registry_file, settings.default_model)
    device = DeviceConfig.from_settings(settings)
    budget = settings.model_memory_budget_mb * 1024 * 1024 if settings.model_memory_budget_mb else None
    speed = SpeedOptions.from_settings(settings)
    if speed.compile_mode != "off":
        use_compile_cache(settings.compile_cache_dir or settings.data_dir / "compile-cache")
    pipelines = PipelineCache(
        registry, device, settings.models_dir, memory_budget=budget, max_loras=settings.max_loras, speed=speed
    )
    for model in settings.worker_models:
        registry.model(model)  # fail fast on a name the registry lacks
        started = time.perf_counter()
        if settings.warmup:
            pipelines.warm(model)
        else:
            pipelines.load(model)
        log.info("model %s ready in %.2fs on %s", model, time.perf_counter() - started, device.describe())
    return Runtime(
        settings=settings,
        registry=registry,
        pipelines=pipelines,
        store=open_store(settings, signing_key=None),
        tracker=JobTracker(connection, Keys(settings.key_prefix)),
        device=device,
        name=name,
    )


def make_worker(settings: Settings, connection: redis.Redis, runtime: Runtime) -> SdWorker:
    """The RQ worker listening on the queues of the runtime's models."""
    keys = Keys(settings.key_prefix)
    queues = [rq_queue(connection, keys, model) for model in settings.worker_models]
    worker = SdWorker(
        queues,
        connection=connection,
        name=runtime.name,
        serializer=JSONSerializer,
        keys=keys,
        heartbeat_seconds=settings.heartbeat_seconds,
        presence=lambda: SdWorker.presence_fields(
            settings.worker_models, runtime.pipelines.loaded(), runtime.device.describe(), ready=True
        ),
        served=list(settings.worker_models),
        ready_file=settings.ready_file,
    )
    janitor = Janitor(
        connection,
        keys,
        max_attempts=settings.max_attempts,
        queue_key=lambda model: rq_queue(connection, keys, model).key,
    )
    worker.ticks.append((10.0, janitor.sweep))
    worker.ticks.append((5.0, RegistryWatch(settings, connection, keys, runtime).check))
    if settings.max_batch_images > 1:
        worker.batcher = Batcher(
            connection,
            keys,
            runtime.registry,
            max_images=settings.max_batch_images,
            linger_ms=settings.batch_linger_ms,
        )
    return worker


class RegistryWatch:
    """Reload the registry when an admin reloaded it (the gateway bumps a version counter in Redis)."""

    def __init__(self, settings: Settings, connection: redis.Redis, keys: Keys, runtime: Runtime) -> None:
        self.settings = settings
        self.connection = connection
        self.keys = keys
        self.runtime = runtime
        self.version = self._current()

    def _current(self) -> bytes | None:
        value = self.connection.get(self.keys.registry_version())
        return value if isinstance(value, bytes) else None

    def check(self) -> None:
        version = self._current()
        if version == self.version:
            return
        self.version = version
        registry = Registry.load(self.settings.registry_file, self.settings.default_model)
        self.runtime.registry = registry
        self.runtime.pipelines.registry = registry
        log.info("registry reloaded (version %s)", version.decode() if version else "0")


def serve(settings: Settings) -> None:
    """Entry point of `sdserve worker`."""
    configure_logging(settings.log_level, process="worker")
    quiet_libraries()
    name = worker_name(settings.worker_name)
    connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    warn_about_redis(connection, "worker")
    runtime = build_runtime(settings, connection, name)
    jobs.install(runtime)
    serve_metrics(settings.worker_metrics_port, "worker")
    setup_tracing(settings, "worker")
    worker = retrying(lambda: make_worker(settings, connection, runtime), seconds=300)  # Redis may be restarting
    log.info("worker %s ready: models %s", name, ", ".join(settings.worker_models))
    worker.work(logging_level=settings.log_level.upper(), with_scheduler=False)
