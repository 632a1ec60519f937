"""A kind the engine has never heard of (tests/echo_kind.py) gets every engine feature, through real HTTP,
Redis, RQ and a real worker: records, queue positions, events, progress facts, results, listing, isolation
from other kinds, idempotency, cancel, delete, failures with its own problem type, webhooks, recovery by the
janitor and metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.images.kind import IMAGES
from app.main import create_app
from dispatcher.dispatcher import Dispatcher
from sdserve.jobs.janitor import Janitor
from sdserve.jobs.kind import Kinds
from sdserve.jobs.record import from_hash
from sdserve.jobs.tracker import JobTracker
from sdserve.keys import Keys
from sdserve.kinds import builtin_kinds
from sdserve.observe.metrics import Metrics
from sdserve.settings import Settings
from sdserve.storage.factory import open_store
from tests.conftest import LiveServer, run_burst, wait_for
from tests.echo_kind import ECHO, ECHO_GATEWAY, EchoRunner
from tests.receiver import Receiver


@pytest.fixture
def echo_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_models": ["tiny"]})


@pytest.fixture
def echo_client(echo_settings: Settings, redis_client: redis.Redis) -> Iterator[httpx.Client]:
    app = create_app(echo_settings, kinds=(IMAGES, ECHO_GATEWAY))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


def runner(settings: Settings, connection: redis.Redis) -> EchoRunner:
    return EchoRunner(JobTracker(connection, Keys(settings.key_prefix), job_ttl=settings.job_ttl_seconds))


def events(client: httpx.Client, path: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with client.stream("GET", path, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                found.append((name, json.loads(line.partition(":")[2])))
    return found


def test_a_kind_the_engine_never_heard_of_gets_records_events_results_and_listing(
    echo_client: httpx.Client, echo_settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    created = echo_client.post("/v1/echoes", json={"text": "hello", "repeat": 2, "steps": 4, "metadata": {"a": "b"}})
    assert created.status_code == 202, created.text
    echo = created.json()
    assert created.headers["location"].endswith(f"/v1/echoes/{echo['id']}")
    assert echo["object"] == "echo" and echo["status"] == "queued" and echo["queue_position"] == 0
    assert echo["links"]["self"].endswith(f"/v1/echoes/{echo['id']}")
    image = echo_client.post("/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}).json()

    echo_runner = runner(echo_settings, redis_client)
    run_burst(echo_settings, redis_client, pipelines, runners=[echo_runner])
    assert echo_runner.ran == [echo["id"]]

    done = echo_client.get(f"/v1/echoes/{echo['id']}").json()
    assert done["status"] == "succeeded" and done["text"] == "hello hello" and done["echoed"] == 4
    assert done["progress"] == {"step": 4, "total": 4, "fraction": 1.0}
    assert done["metadata"] == {"a": "b"} and done["error"] is None
    assert httpx.get(done["text_url"]).content == b"hello hello"  # a signed URL to the run's own output
    names = [name for name, _ in events(echo_client, f"/v1/echoes/{echo['id']}/events")]
    assert names == ["queued", "started", "progress", "progress", "progress", "progress", "succeeded"]
    last = events(echo_client, f"/v1/echoes/{echo['id']}/events")[-1][1]
    assert last["echo"]["text"] == "hello hello"

    # Each kind lists its own jobs, and a job of one kind is not found under another's collection.
    assert [e["id"] for e in echo_client.get("/v1/echoes").json()["data"]] == [echo["id"]]
    assert [j["id"] for j in echo_client.get("/v1/jobs").json()["data"]] == [image["id"]]
    assert echo_client.get(f"/v1/jobs/{echo['id']}").status_code == 404
    assert echo_client.get(f"/v1/echoes/{image['id']}").status_code == 404
    operations = {op["operationId"] for path in echo_client.get("/openapi.json").json()["paths"].values()
                  for op in path.values()}  # fmt: skip
    assert {"createEcho", "getEcho", "listEchos", "cancelEcho", "deleteEcho", "streamEchoEvents"} <= operations

    # Delete purges what it stored; the record stays, marked.
    assert echo_client.delete(f"/v1/echoes/{echo['id']}").status_code == 204
    purged = echo_client.get(f"/v1/echoes/{echo['id']}").json()
    assert purged["purged"] and purged["text_url"] is None
    assert httpx.get(done["text_url"]).status_code == 404


def test_idempotency_cancel_and_its_own_problem_type(
    echo_client: httpx.Client, echo_settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    headers = {"Idempotency-Key": "echo-1"}
    first = echo_client.post("/v1/echoes", json={"text": "once"}, headers=headers).json()
    again = echo_client.post("/v1/echoes", json={"text": "once"}, headers=headers)
    assert again.json()["id"] == first["id"] and again.headers["idempotent-replayed"] == "true"
    other = echo_client.post("/v1/echoes", json={"text": "other"}, headers=headers)
    assert other.status_code == 422 and other.json()["type"] == "/problems/idempotency-key-reused"

    canceled = echo_client.post(f"/v1/echoes/{first['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["error"]["type"] == "/problems/canceled"
    failing = echo_client.post("/v1/echoes", json={"text": "no", "steps": 5, "fail_at": 3}).json()
    echo_runner = runner(echo_settings, redis_client)
    run_burst(echo_settings, redis_client, pipelines, runners=[echo_runner])
    assert echo_runner.ran == [failing["id"]]  # the canceled one never ran
    failed = echo_client.get(f"/v1/echoes/{failing['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "/problems/echo-refused"
    assert failed["echoed"] == 2  # its progress facts stopped where it failed
    explained = echo_client.get("/problems/echo-refused").json()
    assert explained["title"] == "The echo was refused"

    metrics = echo_client.get("/metrics").text
    assert 'sdserve_jobs_finished_total{kind="echo",model="",status="canceled",task="echo"} 1.0' in metrics


def test_a_kind_the_engine_never_heard_of_is_recovered_by_the_janitor(
    echo_client: httpx.Client, echo_settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    keys = Keys(echo_settings.key_prefix)
    echo = echo_client.post("/v1/echoes", json={"text": "again"}).json()
    tracker = JobTracker(redis_client, keys, job_ttl=echo_settings.job_ttl_seconds)
    record = from_hash(redis_client.hgetall(keys.job(echo["id"])))
    assert redis_client.lrem(keys.queue_key("echo"), 1, echo["id"]) == 1
    assert not isinstance(tracker.start(record, "ghost.1"), str)  # a worker took it, then died (no presence)
    janitor = Janitor(redis_client, keys, max_attempts=3, job_ttl=echo_settings.job_ttl_seconds, metrics=Metrics())
    assert janitor.sweep()
    assert echo_client.get(f"/v1/echoes/{echo['id']}").json()["status"] == "queued"
    run_burst(echo_settings, redis_client, pipelines, runners=[runner(echo_settings, redis_client)])
    done = echo_client.get(f"/v1/echoes/{echo['id']}").json()
    assert done["status"] == "succeeded" and from_hash(redis_client.hgetall(keys.job(echo["id"]))).attempts == 2
    assert done["text_url"] and "/outputs/" in done["text_url"] and "/2/echo.txt" in done["text_url"]


def test_a_kind_the_engine_never_heard_of_sends_its_own_webhooks(
    echo_settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    settings = echo_settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8:1024-65535"]})
    app = create_app(settings, kinds=(IMAGES, ECHO_GATEWAY))
    with Receiver() as receiver, LiveServer(app) as server, httpx.Client(base_url=server.url) as echo_client:
        created = echo_client.post(
            "/v1/echoes", json={"text": "hook", "webhook": {"url": receiver.url, "events": ["started", "succeeded"]}}
        )
        assert created.status_code == 202, created.text
        echo = created.json()
        run_burst(settings, redis_client, pipelines, runners=[runner(settings, redis_client)])
        loop = asyncio.new_event_loop()
        dispatcher: Dispatcher | None = None

        def dispatch() -> None:
            nonlocal dispatcher
            import redis.asyncio as aioredis

            async def main() -> None:
                nonlocal dispatcher
                client = aioredis.Redis.from_url(settings.redis_url)
                dispatcher = Dispatcher(
                    settings, client, open_store(settings, signing_key=b"test-secret"),
                    kinds=Kinds([*builtin_kinds(), ECHO]), secret="whsec_" + "a" * 32, metrics=Metrics(),
                )  # fmt: skip
                await dispatcher.run()
                await client.aclose()

            loop.run_until_complete(main())

        thread = threading.Thread(target=dispatch, daemon=True)
        thread.start()
        try:
            got = receiver.wait(2)
        finally:
            wait_for(lambda: dispatcher is not None)
            assert dispatcher is not None
            loop.call_soon_threadsafe(dispatcher.stopping.set)
            thread.join(10)
    bodies = [json.loads(r.body) for r in got]
    assert [b["type"] for b in bodies] == ["echo.started", "echo.succeeded"]
    assert bodies[-1]["data"]["id"] == echo["id"] and bodies[-1]["data"]["text"] == "hook"
