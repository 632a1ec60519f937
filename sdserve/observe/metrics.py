"""Prometheus metrics of every process, named once here, each process with its own registry.

The gateway serves ``/metrics``; each worker and the webhook dispatcher serve their own on their metrics
port (pods are scraped one by one, as usual). Per-process endpoints, rather than collectors reading Redis,
keep each number next to the process that knows it (GPU memory, a worker's busy time, a phase's duration);
queue depths, which live in Redis, are exported by the gateway. A job is counted as finished by the process
that ended it: the worker, the janitor (a timeout, a lost worker) or the gateway (a job canceled while queued).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PHASE = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

JOB_LABELS = ["kind", "task", "model"]


def attempt_label(attempt: int) -> str:
    """Attempt numbers as a small label set: 1, 2, 3, 4+."""
    return str(attempt) if attempt < 4 else "4+"


@dataclass
class Metrics:
    """Every metric sdserve exports, in one registry (one per process; tests make as many as they like)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # --- gateway --------------------------------------------------------------------------------
        self.http_requests = Counter(
            "sdserve_http_requests_total", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.http_duration = Histogram(
            "sdserve_http_request_duration_seconds", "Time to answer an HTTP request.", ["route", "method"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.jobs_submitted = Counter("sdserve_jobs_submitted_total", "Jobs accepted.", JOB_LABELS, registry=r)
        self.queue_depth = Gauge("sdserve_queue_depth", "Jobs waiting in a queue.", ["queue", "model"], registry=r)
        self.queue_oldest = Gauge(
            "sdserve_queue_oldest_job_age_seconds", "Age of the oldest job waiting in a queue.", ["queue", "model"],
            registry=r,
        )  # fmt: skip
        self.live_workers = Gauge("sdserve_live_workers", "Live workers serving a model.", ["model"], registry=r)
        self.redis_waits = Counter(
            "sdserve_redis_pool_waits_total", "Requests that waited for a free Redis connection.", registry=r
        )
        # --- every process that ends jobs -----------------------------------------------------------
        self.jobs_finished = Counter(
            "sdserve_jobs_finished_total", "Jobs ended, by the process that ended them.", [*JOB_LABELS, "status"],
            registry=r,
        )  # fmt: skip
        self.job_failures = Counter(
            "sdserve_job_failures_total", "Failed jobs by problem type.", [*JOB_LABELS, "problem"], registry=r
        )
        # --- worker ---------------------------------------------------------------------------------
        self.job_phase = Histogram(
            "sdserve_job_phase_seconds",
            "Where jobs spend their time: queue_wait, model_load, loras, denoise, decode, upload.",
            [*JOB_LABELS, "phase"], buckets=_PHASE, registry=r,
        )  # fmt: skip
        self.images = Counter("sdserve_images_generated_total", "Images generated.", ["model", "task"], registry=r)
        self.batch_size = Histogram(
            "sdserve_batch_images", "Images per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.busy_seconds = Counter(
            "sdserve_worker_busy_seconds_total", "Seconds a worker spent running jobs (rate = busy ratio).", registry=r
        )
        self.gpu_memory = Gauge("sdserve_gpu_memory_bytes", "Accelerator memory held by tensors now.", registry=r)
        self.gpu_memory_peak = Gauge(
            "sdserve_gpu_memory_peak_bytes", "Peak accelerator memory held by tensors.", registry=r
        )
        self.lora_events = Counter(
            "sdserve_lora_events_total", "LoRA cache of a worker: hit, load, eviction.", ["event"], registry=r
        )
        self.resident_models = Gauge("sdserve_resident_models", "Models loaded on a worker.", registry=r)
        # --- dispatcher and janitor -----------------------------------------------------------------
        self.webhooks = Counter(
            "sdserve_webhook_deliveries_total", "Webhook delivery attempts.", ["event", "outcome", "attempt"],
            registry=r,
        )  # fmt: skip
        self.webhook_duration = Histogram(
            "sdserve_webhook_delivery_seconds", "Time of one delivery attempt.", buckets=_LATENCY, registry=r
        )
        self.recovered = Counter(
            "sdserve_jobs_recovered_total", "Jobs the janitor requeued or failed.", ["action"], registry=r
        )


class MetricsPortTaken(RuntimeError):
    """The metrics port is in use (several workers on one host need one port each)."""


def serve_metrics(metrics: Metrics, host: str, port: int, process: str) -> None:
    """Expose this process's metrics on ``host:port`` (port 0: do not); refuse loudly when the port is taken."""
    if not port:
        return
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise MetricsPortTaken(
            f"{process} metrics: port {port} on {host} is taken ({exc.strerror}); another {process} on this host? "
            f"Give each its own port (SDSERVE_{process.upper()}_METRICS_PORT, or 0 for none)."
        ) from exc
    log.info("%s metrics on %s:%d/metrics", process, host, port)
