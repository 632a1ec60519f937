"""What operators watch: Prometheus metrics of gateway and worker, JSON log lines, optional tracing."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from sdserve.keys import Keys
from sdserve.observe.logs import JsonFormatter, bind
from sdserve.observe.metrics import Metrics
from sdserve.settings import Settings

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
JOB = {"kind": "image", "task": "txt2img", "model": "tiny"}


def scrape(client: httpx.Client) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """The gateway's /metrics: its text, and every sample by name and labels."""
    text = client.get("/metrics").text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_gateway_metrics(client: httpx.Client) -> None:
    _, before = scrape(client)
    accepted = value(before, "sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="202")
    for _ in range(3):
        client.post("/v1/txt2img", json=BODY)
    client.post("/v1/txt2img", json={**BODY, "width": 3})
    text, after = scrape(client)
    assert value(after, "sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="202") == (
        accepted + 3
    )
    assert value(after, "sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="422") >= 1
    assert value(after, "sdserve_queue_depth", queue="tiny", model="tiny") == 3.0
    assert value(after, "sdserve_queue_oldest_job_age_seconds", queue="tiny", model="tiny") > 0
    assert "sdserve_http_request_duration_seconds_bucket" in text
    assert value(after, "sdserve_jobs_submitted_total", **JOB) >= 3


def test_worker_metrics(client: httpx.Client, run_worker: Any, pipelines: Any) -> None:
    loras = pipelines.metrics  # the LoRA cache counts on its pipelines' metrics
    lora_events = sample(loras, "sdserve_lora_events_total", event="load") + sample(
        loras, "sdserve_lora_events_total", event="hit"
    )
    client.post("/v1/txt2img", json={**BODY, "num_images": 2})
    client.post("/v1/txt2img", json={**BODY, "loras": [{"name": "tiny-detail"}]})
    metrics = run_worker().engine.metrics  # this worker's own registry
    assert sample(metrics, "sdserve_jobs_finished_total", **JOB, status="succeeded") == 2
    assert sample(metrics, "sdserve_images_generated_total", model="tiny", task="txt2img") == 3
    assert sample(metrics, "sdserve_job_phase_seconds_count", **JOB, phase="denoise") == 2
    for phase in ("queue_wait", "model_load", "loras", "decode", "upload"):
        assert sample(metrics, "sdserve_job_phase_seconds_count", **JOB, phase=phase) > 0, phase
    assert sample(metrics, "sdserve_worker_busy_seconds_total") > 0
    assert (
        sample(loras, "sdserve_lora_events_total", event="load")
        + sample(loras, "sdserve_lora_events_total", event="hit")
        > lora_events
    )


def test_jobs_are_counted_by_the_process_that_ended_them(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    from sdserve.jobs.janitor import Janitor
    from sdserve.jobs.tracker import Attempt, JobTracker

    keys = Keys(settings.key_prefix)
    # Canceled while queued (by a cancel, or by a delete): the gateway ended them, so its /metrics counts them.
    canceled = client.post("/v1/txt2img", json=BODY).json()["id"]
    deleted = client.post("/v1/txt2img", json=BODY).json()["id"]
    assert client.post(f"/v1/jobs/{canceled}/cancel").json()["status"] == "canceled"
    assert client.post(f"/v1/jobs/{canceled}/cancel").json()["status"] == "canceled"  # counted once
    assert client.delete(f"/v1/jobs/{deleted}").status_code == 204
    assert client.get(f"/v1/jobs/{deleted}").json()["status"] == "canceled"
    _, gateway = scrape(client)
    assert value(gateway, "sdserve_jobs_finished_total", **JOB, status="canceled") == 2
    # No worker ran them, so none counts them.
    assert run_worker().engine.metrics.registry.get_sample_value(
        "sdserve_jobs_finished_total", {**JOB, "status": "canceled"}
    ) in (None, 0.0)
    # Failed by the janitor (its worker died each time): the janitor's metrics count it.
    lost = client.post("/v1/txt2img", json=BODY).json()["id"]
    janitor = Janitor(redis_client, keys, max_attempts=1, job_ttl=settings.job_ttl_seconds, metrics=Metrics())
    tracker = JobTracker(redis_client, keys, job_ttl=settings.job_ttl_seconds)
    assert redis_client.lmove(keys.queue_key("tiny"), keys.claimed("tiny"), "LEFT", "RIGHT") == lost.encode()
    record = tracker.load(lost)
    assert record is not None and isinstance(tracker.start(record, "gone.1"), Attempt)
    assert janitor.sweep()
    assert client.get(f"/v1/jobs/{lost}").json()["status"] == "failed"
    assert sample(janitor.metrics, "sdserve_jobs_finished_total", **JOB, status="failed") == 1
    assert sample(janitor.metrics, "sdserve_job_failures_total", **JOB, problem="worker-lost") == 1
    _, gateway = scrape(client)
    assert value(gateway, "sdserve_jobs_finished_total", **JOB, status="failed") == 0  # not the gateway's to count


def test_log_lines_are_json_with_their_context() -> None:
    formatter = JsonFormatter("worker")
    record = logging.LogRecord("sdserve.test", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    record.duration_ms = 12.5
    with bind(request_id="r-1", job_id="j1"):
        line = json.loads(formatter.format(record))
    assert line["msg"] == "job j1 done" and line["level"] == "info" and line["process"] == "worker"
    assert line["request_id"] == "r-1" and line["job_id"] == "j1" and line["duration_ms"] == 12.5


def test_the_request_id_is_stored_on_the_job(client: httpx.Client, settings: Settings, redis_client: Any) -> None:
    answer = client.post("/v1/txt2img", json=BODY, headers={"X-Request-ID": "req-42"})
    assert answer.headers["x-request-id"] == "req-42"
    stored = redis_client.hget(Keys(settings.key_prefix).job(answer.json()["id"]), "request_id")
    assert stored == b"req-42"


def test_tracing_links_gateway_worker_and_store(settings: Settings, redis_client: Any, pipelines: Any) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app.main import create_app
    from sdserve.observe import tracing
    from tests.conftest import LiveServer, run_burst

    exporter = InMemorySpanExporter()
    traced = settings.model_copy(update={"otel_enabled": True})
    assert tracing.setup_tracing(traced, "test", exporter=exporter)
    try:
        with LiveServer(create_app(traced)) as server:
            job_id = httpx.post(f"{server.url}/v1/txt2img", json=BODY).json()["id"]
            run_burst(traced, redis_client, pipelines)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert {"sdserve.submit", "sdserve.job", "sdserve.generate", "sdserve.store"} <= set(spans)
        submit, job = spans["sdserve.submit"], spans["sdserve.job"]
        assert job.context.trace_id == submit.context.trace_id  # one trace from gateway to store
        assert job.parent is not None and job.parent.span_id == submit.context.span_id
        assert spans["sdserve.store"].parent.span_id == job.context.span_id  # type: ignore[union-attr]
        assert submit.attributes["sdserve.job_id"] == job_id  # type: ignore[index]
    finally:
        tracing._enabled = False
