"""The worker process's composition root: warm the models, then take jobs until told to stop.

SIGTERM (or Ctrl-C) is a warm shutdown: the running job finishes, nothing new is taken.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from sdserve.jobs.janitor import Janitor
from sdserve.jobs.presence import WorkerPresence
from sdserve.jobs.tracker import JobTracker, patient_connection, retrying
from sdserve.keys import Keys
from sdserve.observe.logs import configure_logging
from sdserve.observe.metrics import Metrics, serve_metrics
from sdserve.observe.redischeck import warn_about_redis
from sdserve.observe.tracing import setup_tracing
from sdserve.registry import Registry, RegistryHolder
from sdserve.settings import Settings
from sdserve.storage.base import ObjectStore
from sdserve.storage.factory import open_store
from worker.engine import slot
from worker.engine.kind import Runner
from worker.engine.rqworker import BELL_WAIT_SECONDS, SdWorker
from worker.engine.runner import Engine
from worker.images.batching import Batcher
from worker.images.runner import ImageRunner
from worker.models.device import DeviceConfig
from worker.models.pipelines import PipelineCache
from worker.models.schedulers import check_names
from worker.models.speed import SpeedOptions, use_compile_cache
from worker.trainings.runner import TrainingRunner

log = logging.getLogger("sdserve.worker")


def worker_name(configured: str | None = None) -> str:
    """``<configured name or host>.<pid>.<random>``: unique per process *incarnation*, readable in logs.

    Liveness is keyed by name (the presence the janitor checks, RQ's worker hash). A container restarted in
    its pod keeps the pod name (SDSERVE_WORKER_NAME) and often pid 1: it must not pass for the worker that
    died, or the job that worker was running is never requeued, and RQ refuses to start it for minutes.
    """
    return f"{configured or socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


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


@dataclass
class WorkerParts:
    """A warm worker's parts: what ``make_worker`` assembles into an RQ worker."""

    settings: Settings
    holder: RegistryHolder
    pipelines: PipelineCache
    device: DeviceConfig
    metrics: Metrics
    name: str


def warm_up(settings: Settings, name: str, metrics: Metrics | None = None) -> WorkerParts:
    """Load (and warm) every model this worker serves; the parts are ready when this returns."""
    check_names()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    holder = RegistryHolder(lambda: Registry.load(settings.registry_file, settings.default_model))
    device = DeviceConfig.from_settings(settings)
    budget = settings.model_memory_budget_mb * 1024 * 1024 if settings.model_memory_budget_mb else None
    speed = SpeedOptions.from_settings(settings)
    if speed.compile_mode != "off":
        use_compile_cache(settings.compile_cache_dir or settings.data_dir / "compile-cache")
    metrics = metrics or Metrics()
    pipelines = PipelineCache(
        holder, device, settings.models_dir, memory_budget=budget, max_loras=settings.max_loras, speed=speed,
        metrics=metrics,
    )  # fmt: skip
    for model in settings.worker_models:
        holder.current.model(model)  # fail fast on a name the registry lacks
        started = time.perf_counter()
        if settings.warmup:
            pipelines.warm(model)
        else:
            pipelines.load(model)
        log.info("model %s ready in %.2fs on %s", model, time.perf_counter() - started, device.describe())
    return WorkerParts(settings, holder, pipelines, device, metrics, name)


def runners(parts: WorkerParts, connection: redis.Redis, tracker: JobTracker, store: ObjectStore) -> list[Runner]:
    """The kinds of work this worker runs."""
    settings = parts.settings
    keys = Keys(settings.key_prefix)
    batcher = None
    if settings.max_batch_images > 1:
        batcher = Batcher(
            connection, keys, parts.holder, max_images=settings.max_batch_images, linger_ms=settings.batch_linger_ms
        )
    found: list[Runner] = [
        ImageRunner(
            settings, parts.holder, parts.pipelines, tracker, parts.metrics,
            worker_name=parts.name, device=parts.device.describe(), batcher=batcher,
        )
    ]  # fmt: skip
    if any(model in settings.worker_models for model in settings.training_models):
        found.append(
            TrainingRunner(
                settings, parts.holder, parts.pipelines, tracker, connection, store,
                worker_name=parts.name, device=parts.device.describe(),
            )
        )  # fmt: skip
    return found


def make_worker(parts: WorkerParts, connection: redis.Redis, extra_runners: Sequence[Runner] = ()) -> SdWorker:
    """The RQ worker taking the jobs of every runner's queues, with its janitor and registry watch."""
    settings = parts.settings
    keys = Keys(settings.key_prefix)
    tracker = JobTracker(connection, keys, job_ttl=settings.job_ttl_seconds)
    store = open_store(settings, signing_key=None)  # one store for the engine and every runner
    all_runners = [*runners(parts, connection, tracker, store), *extra_runners]
    engine = Engine(
        name=parts.name, tracker=tracker, store=store, runners=all_runners,
        metrics=parts.metrics, device=parts.device.describe(),
    )  # fmt: skip
    refs = [queue for runner in all_runners for queue in runner.queues()]
    rq_queues = [Queue(keys.queue_name(q.name), connection=connection, serializer=JSONSerializer) for q in refs]
    worker: SdWorker

    def presence() -> WorkerPresence:
        described = [runner.describe() for runner in all_runners]
        return WorkerPresence(
            name=parts.name,
            queues=[q.name for q in refs],
            models=sorted({m for d in described for m in d.get("models", [])}),
            resident=sorted({m for d in described for m in d.get("resident", [])}),
            kinds=[runner.kind for runner in all_runners],
            device=parts.device.describe(),
            ready=True,
            busy=worker.busy,
            heartbeat_seconds=settings.heartbeat_seconds,
            metrics_port=settings.worker_metrics_port or None,
        )

    worker = SdWorker(
        rq_queues,
        connection=connection,
        name=parts.name,
        serializer=JSONSerializer,
        keys=keys,
        engine=engine,
        priorities={q.name: q.priority for q in refs},
        heartbeat_seconds=settings.heartbeat_seconds,
        presence=presence,
        ready_file=settings.ready_file,
    )
    janitor = Janitor(
        connection, keys, max_attempts=settings.max_attempts, job_ttl=settings.job_ttl_seconds, metrics=parts.metrics
    )
    worker.ticks.append((10.0, janitor.sweep))
    worker.ticks.append((5.0, RegistryWatch(connection, keys, parts.holder).check))
    slot.install(engine)
    return worker


class RegistryWatch:
    """Reload the registry when an admin reloaded it (the gateway bumps a version counter in Redis)."""

    def __init__(self, connection: redis.Redis, keys: Keys, holder: RegistryHolder) -> None:
        self.connection = connection
        self.keys = keys
        self.holder = holder
        self.version = self._current()

    def _current(self) -> bytes | None:
        value = self.connection.get(self.keys.registry_version())
        return value if isinstance(value, bytes) else None

    def check(self) -> None:
        version = self._current()
        if version == self.version:
            return
        self.holder.reload()  # the runtime, the pipelines and the batcher all read the holder
        self.version = version
        log.info("registry reloaded (version %s)", version.decode() if version else "0")


def serve(settings: Settings) -> None:
    """Entry point of `sdserve worker`."""
    configure_logging(settings.log_level, process="worker")
    quiet_libraries()
    name = worker_name(settings.worker_name)
    metrics = Metrics()
    serve_metrics(metrics, settings.host, settings.worker_metrics_port, "worker")  # a taken port stops us here
    connection = patient_connection(settings.redis_url, health_check_interval=30, socket_timeout=BELL_WAIT_SECONDS + 25)
    warn_about_redis(connection, "worker")
    parts = warm_up(settings, name, metrics)
    setup_tracing(settings, "worker")
    worker = retrying(lambda: make_worker(parts, connection))  # Redis may be restarting
    log.info("worker %s ready: models %s", name, ", ".join(settings.worker_models))
    worker.work(logging_level=settings.log_level.upper(), with_scheduler=False)
