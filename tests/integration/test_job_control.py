"""What an integrator touches around a job: SSE events, cancel, Idempotency-Key, Prefer: wait, listing, delete."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import run_burst, wait_for
from worker.images.steps import StepCallback

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4}


def sse(
    client: httpx.Client,
    job_id: str,
    last_event_id: str | None = None,
    limit: int = 1000,
    received: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Read a job's event stream to its end (or ``limit`` events); returns the parsed events.

    ``received`` is set once the first event has arrived.
    """
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    current["data"] = json.loads(current.get("data", "{}"))
                    events.append(current)
                    if received is not None:
                        received.set()
                    if len(events) >= limit:
                        break
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.lstrip(" ")
    return events


@contextmanager
def worker_in_background(
    settings: Settings, connection: redis.Redis, pipelines: Any, start_when: Callable[[], object]
) -> Iterator[threading.Thread]:
    """A burst worker in a thread that starts once ``start_when()`` holds."""

    def run() -> None:
        wait_for(start_when, timeout=60)
        run_burst(settings, connection, pipelines)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(120)


def test_sse_streams_the_whole_life_and_resumes_without_loss(client: httpx.Client, run_worker: Any) -> None:
    job_id = client.post("/v1/txt2img", json={**BODY, "steps": 6}).json()["id"]
    run_worker()
    events = sse(client, job_id)  # connecting after the end: the whole history, then the end
    names = [e["event"] for e in events]
    assert names[0] == "queued" and names[1] == "started" and names[-1] == "succeeded"
    assert names.count("progress") == 6
    assert events[0]["data"]["queue_position"] is None  # not waiting any more
    assert events[-1]["data"]["job"]["images"][0]["url"].startswith("http")
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert any("preview" in e["data"] for e in events if e["event"] == "progress")
    preview = next(e["data"]["preview"] for e in events if "preview" in e["data"])
    assert preview.startswith("data:image/jpeg;base64,")
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
    for cut in (0, 2, 5):
        resumed = sse(client, job_id, last_event_id=ids[cut])
        assert [e["id"] for e in resumed] == ids[cut + 1 :]  # nothing lost, nothing repeated
    bad = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "garbage"})
    assert bad.status_code == 422


def test_sse_follows_a_live_job(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    received = threading.Event()
    with worker_in_background(settings, redis_client, pipelines, start_when=received.is_set):
        events = sse(client, job_id, received=received)  # the worker starts once the stream has begun
    assert events[0]["event"] == "queued" and events[0]["data"]["queue_position"] == 0
    assert events[-1]["event"] == "succeeded"


def test_cancel_a_queued_job_at_once(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    other = client.post("/v1/txt2img", json=BODY).json()["id"]
    canceled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{other}").json()["queue_position"] == 0  # it left the queue
    again = client.post(f"/v1/jobs/{job_id}/cancel")  # harmless to repeat
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["error"]["type"] == "/problems/canceled"
    assert client.get(f"/v1/jobs/{other}").json()["status"] == "succeeded"
    assert not (settings.objects_dir / "outputs" / job_id).exists()
    assert client.post(f"/v1/jobs/{other}/cancel").json()["status"] == "succeeded"  # ended: unchanged
    assert sse(client, job_id)[-1]["event"] == "canceled"


def test_cancel_a_running_job_within_one_step(
    client: httpx.Client, run_worker: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = StepCallback.report
    seen: list[int] = []

    def report_and_cancel(self: StepCallback, step: int, latents: Any = None) -> None:
        seen.append(step)
        if step == 2:
            answer = client.post(f"/v1/jobs/{self.members[0].job.id}/cancel").json()
            assert answer["status"] == "running" and answer["cancel_requested"]
        report(self, step, latents)

    monkeypatch.setattr(StepCallback, "report", report_and_cancel)
    job_id = client.post("/v1/txt2img", json={**BODY, "steps": 20}).json()["id"]
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["images"] == []
    assert job["error"]["type"] == "/problems/canceled"
    assert max(seen) == 2  # the step that saw the cancel request was the last one
    assert not (settings.objects_dir / "outputs" / job_id).exists()


def test_idempotency_key_racing_requests_create_exactly_one_job(
    client: httpx.Client, gateway: str, settings: Settings, redis_client: redis.Redis
) -> None:
    headers = {"Idempotency-Key": "order-7731"}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=gateway, timeout=30) as c:
            return c.post("/v1/txt2img", json=BODY, headers=headers)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(post, range(50)))
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202][:2]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if a.headers.get("idempotent-replayed") == "true") == 49
    index = Keys(settings.key_prefix).index("image", "anonymous")
    assert redis_client.zcard(index) == 1
    reused = client.post("/v1/txt2img", json={**BODY, "prompt": "something else"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["type"] == "/problems/idempotency-key-reused"
    # Whitespace and key order do not make a different body.
    same = client.post(
        "/v1/txt2img",
        content=json.dumps(dict(reversed(list(BODY.items()))), indent=2),
        headers={**headers, "content-type": "application/json"},
    )
    assert same.status_code == 202 and same.json()["id"] == answers[0].json()["id"]


def test_prefer_wait_answers_200_for_a_short_job(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    queue = Keys(settings.key_prefix).queue_key("tiny")
    with worker_in_background(settings, redis_client, pipelines, start_when=lambda: redis_client.llen(queue)):
        started = time.monotonic()
        answer = client.post("/v1/txt2img", json=BODY, headers={"Prefer": "wait=30"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded" and answer.json()["images"]
    assert answer.headers["preference-applied"] == "wait=30"
    assert time.monotonic() - started < 30
    # No worker: the wait runs out and the usual 202 comes back.
    started = time.monotonic()
    late = client.post("/v1/txt2img", json=BODY, headers={"Prefer": "respond-async, wait=1"})
    assert late.status_code == 202 and 0.9 < time.monotonic() - started < 5
    capped = client.post("/v1/txt2img", json=BODY, headers={"Prefer": "wait=0"})
    assert capped.status_code == 202


def test_listing_filters_newest_first_with_cursors(client: httpx.Client, run_worker: Any) -> None:
    first = [client.post("/v1/txt2img", json=BODY).json()["id"] for _ in range(3)]
    run_worker()
    marker = client.get(f"/v1/jobs/{first[-1]}").json()["created_at"]
    later = [client.post("/v1/txt2img", json={**BODY, "model": "tiny-sdxl"}).json()["id"] for _ in range(4)]
    everything = client.get("/v1/jobs", params={"limit": 100}).json()
    assert [j["id"] for j in everything["data"]] == list(reversed(first + later))
    assert everything["next_cursor"] is None
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
    assert [j["id"] for j in queued] == list(reversed(later))
    assert [j["queue_position"] for j in queued] == [3, 2, 1, 0]
    assert [j["id"] for j in client.get("/v1/jobs", params={"model": "tiny"}).json()["data"]] == list(reversed(first))
    after = client.get("/v1/jobs", params={"created_after": marker}).json()["data"]
    assert [j["id"] for j in after] == list(reversed(later))
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        pages.extend(j["id"] for j in page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == list(reversed(first + later))
    assert client.get("/v1/jobs", params={"cursor": "nonsense!"}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "exploded"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 101}).status_code == 422


def test_delete_purges_inputs_and_outputs(client: httpx.Client, run_worker: Any, settings: Settings) -> None:
    from tests.images import data_uri, encode, pattern

    job_id = client.post(
        "/v1/img2img", json={"prompt": "x", "image": data_uri(encode(pattern(64, 64))), "steps": 2}
    ).json()["id"]
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    url = job["images"][0]["url"]
    assert httpx.get(url).status_code == 200
    objects = Path(settings.objects_dir)
    assert (objects / "inputs" / job_id).exists() and (objects / "outputs" / job_id).exists()
    answer = client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 204 and answer.content == b""
    assert not (objects / "inputs" / job_id).exists() and not (objects / "outputs" / job_id).exists()
    assert httpx.get(url).status_code == 404
    after = client.get(f"/v1/jobs/{job_id}").json()
    assert after["purged"] and after["images"] == [] and after["status"] == "succeeded"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204  # harmless to repeat
    assert client.delete("/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95").status_code == 404
