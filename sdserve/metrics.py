"""Prometheus metrics of every process, named once here.

The gateway serves ``/metrics``; each worker and the webhook dispatcher serve their own on
``SDSERVE_METRICS_PORT`` (pods are scraped one by one, as usual). Per-process endpoints, rather than
collectors reading Redis, keep each number next to the process that knows it (GPU memory, a worker's
busy time, a phase's duration) and need no coordination; queue depths, which live in Redis, are
exported by the gateway.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PHASE = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

# --- gateway ----------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("sdserve_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "sdserve_http_request_duration_seconds", "Time to answer an HTTP request.", ["route", "method"], buckets=_LATENCY
)
JOBS_SUBMITTED = Counter("sdserve_jobs_submitted_total", "Jobs accepted.", ["model", "task"])
QUEUE_DEPTH = Gauge("sdserve_queue_depth", "Jobs waiting in a model's queue.", ["model"])
QUEUE_OLDEST = Gauge("sdserve_queue_oldest_job_age_seconds", "Age of the oldest job waiting for a model.", ["model"])
LIVE_WORKERS = Gauge("sdserve_live_workers", "Workers serving a model (seen in the last 30 s).", ["model"])

# --- worker -----------------------------------------------------------------------------------------
JOB_PHASE = Histogram(
    "sdserve_job_phase_seconds",
    "Where jobs spend their time: queue_wait, model_load, adapters, denoise, decode, upload.",
    ["model", "task", "phase"],
    buckets=_PHASE,
)
JOBS_FINISHED = Counter("sdserve_jobs_finished_total", "Jobs a worker ended.", ["model", "task", "status"])
JOB_FAILURES = Counter("sdserve_job_failures_total", "Failed jobs by problem type.", ["model", "task", "problem"])
IMAGES = Counter("sdserve_images_generated_total", "Images generated.", ["model", "task"])
BATCH_SIZE = Histogram("sdserve_batch_images", "Images per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 64))
BUSY_SECONDS = Counter("sdserve_worker_busy_seconds_total", "Seconds a worker spent running jobs (rate = busy ratio).")
GPU_MEMORY = Gauge("sdserve_gpu_memory_bytes", "Accelerator memory held by tensors now.")
GPU_MEMORY_PEAK = Gauge("sdserve_gpu_memory_peak_bytes", "Peak accelerator memory held by tensors.")
ADAPTERS = Counter("sdserve_adapter_events_total", "LoRA adapter cache: hit, load, eviction.", ["event"])
RESIDENT_MODELS = Gauge("sdserve_resident_models", "Models loaded on a worker.")

# --- dispatcher and janitor ---------------------------------------------------------------------------
WEBHOOKS = Counter("sdserve_webhook_deliveries_total", "Webhook delivery attempts.", ["event", "outcome", "attempt"])
WEBHOOK_DURATION = Histogram("sdserve_webhook_delivery_seconds", "Time of one delivery attempt.", buckets=_LATENCY)
RECOVERED = Counter("sdserve_jobs_recovered_total", "Jobs the janitor requeued or failed.", ["action"])


def attempt_label(attempt: int) -> str:
    """Attempt numbers as a small label set: 1, 2, 3, 4+."""
    return str(attempt) if attempt < 4 else "4+"


def serve_metrics(port: int, process: str) -> None:
    """Expose this process's metrics on ``port`` (0: do not)."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as exc:  # e.g. several workers on one host: give each its own port
        log.warning("%s metrics not served: port %d is taken (%s); set its metrics port", process, port, exc)
        return
    log.info("%s metrics on :%d/metrics", process, port)
