"""What operators watch: Prometheus metrics of gateway and worker, JSON log lines, optional tracing."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from sdserve.keys import Keys
from sdserve.logs import JsonFormatter, bind
from sdserve.settings import Settings

pytestmark = pytest.mark.integration

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_gateway_metrics(client: httpx.Client) -> None:
    before = sample("sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="202")
    for _ in range(3):
        client.post("/v1/txt2img", json=BODY)
    client.post("/v1/txt2img", json={**BODY, "width": 3})
    text = client.get("/metrics").text
    assert sample("sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="202") == before + 3
    assert sample("sdserve_http_requests_total", route="/v1/txt2img", method="POST", status="422") >= 1
    assert 'sdserve_queue_depth{model="tiny"} 3.0' in text
    assert sample("sdserve_queue_oldest_job_age_seconds", model="tiny") > 0
    assert "sdserve_http_request_duration_seconds_bucket" in text
    assert sample("sdserve_jobs_submitted_total", model="tiny", task="txt2img") >= 3


def test_worker_metrics(client: httpx.Client, run_worker: Any) -> None:
    labels = {"model": "tiny", "task": "txt2img"}
    done = sample("sdserve_jobs_finished_total", **labels, status="succeeded")
    images = sample("sdserve_images_generated_total", **labels)
    denoise = sample("sdserve_job_phase_seconds_count", **labels, phase="denoise")
    client.post("/v1/txt2img", json={**BODY, "num_images": 2})
    client.post("/v1/txt2img", json={**BODY, "loras": [{"name": "tiny-detail"}]})
    run_worker()
    assert sample("sdserve_jobs_finished_total", **labels, status="succeeded") == done + 2
    assert sample("sdserve_images_generated_total", **labels) == images + 3
    assert sample("sdserve_job_phase_seconds_count", **labels, phase="denoise") == denoise + 2
    for phase in ("queue_wait", "model_load", "adapters", "decode", "upload"):
        assert sample("sdserve_job_phase_seconds_count", **labels, phase=phase) > 0, phase
    assert sample("sdserve_worker_busy_seconds_total") > 0
    assert (
        sample("sdserve_adapter_events_total", event="load") + sample("sdserve_adapter_events_total", event="hit") > 0
    )


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
    from sdserve import tracing
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
