"""Webhooks end to end: a real receiver on loopback, the real dispatcher, Standard Webhooks verification.

No test sleeps for a fixed time: each waits on what it claims, the receiver's requests or the job's delivery
log (which the dispatcher appends to only once the receiver's answer came back). A log with nothing pending
means the dispatcher has nothing more to send for the job.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from dispatcher.dispatcher import Dispatcher
from sdserve.kinds import builtin_kinds
from sdserve.observe.metrics import Metrics
from sdserve.secrets import url_signing_key, webhook_signing_secret
from sdserve.settings import Settings
from sdserve.storage.local import LocalStore
from sdserve.webhooks.guard import WebhookPolicy
from tests.conftest import LiveServer, run_burst, wait_for
from tests.images import decode
from tests.receiver import Receiver, Reply
from tests.store.conftest import REGION, S3Server, aws_env, nanio_server

__all__ = ["aws_env", "nanio_server"]  # fixtures of the store tests, used here too

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback receivers are allow-listed (as an operator would allow an in-cluster network)."""
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.0/8:1024-65535"],
            "webhook_retry_schedule": [0.3, 0.6, 0.9],
            "webhook_timeout_seconds": 2.0,
        }
    )


def make_dispatcher(settings: Settings, client: aioredis.Redis, **kwargs: Any) -> Dispatcher:
    """A dispatcher built as ``dispatcher.main`` builds it (here on the local store)."""
    store = LocalStore(settings.objects_dir, url_signing_key(settings))
    return Dispatcher(
        settings, client, store, kinds=builtin_kinds(), secret=webhook_signing_secret(settings), metrics=Metrics(),
        **kwargs,
    )  # fmt: skip


class RunningDispatcher:
    """The dispatcher on its own event loop in a background thread."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            client = aioredis.Redis.from_url(self.settings.redis_url)
            self.dispatcher = make_dispatcher(self.settings, client, **self.kwargs)
            self.ready.set()
            await self.dispatcher.run()
            await client.aclose()

        self.loop.run_until_complete(main())

    def __enter__(self) -> RunningDispatcher:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.dispatcher.stopping.set)
        self.thread.join(10)


@pytest.fixture
def dispatcher(settings: Settings, redis_client: redis.Redis) -> Iterator[RunningDispatcher]:
    with RunningDispatcher(settings) as running:
        yield running


def submit(client: httpx.Client, url: str, events: list[str] | None = None, **extra: Any) -> str:
    webhook: dict[str, Any] = {"url": url}
    if events is not None:
        webhook["events"] = events
    response = client.post("/v1/txt2img", json={**BODY, "webhook": webhook, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliveries(client: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/jobs/{job_id}/webhook-deliveries")
    assert answer.status_code == 200, answer.text
    log: dict[str, Any] = answer.json()
    return log


def settled(client: httpx.Client, job_id: str, attempts: int, timeout: float = 20.0) -> dict[str, Any]:
    """The job's delivery log once it records ``attempts`` attempts (or more) and nothing is pending."""

    def done() -> dict[str, Any] | None:
        log = deliveries(client, job_id)
        return log if len(log["data"]) >= attempts and log["pending"] == 0 else None

    settled_log: dict[str, Any] = wait_for(done, timeout=timeout)
    return settled_log


def test_terminal_delivery_is_signed_thin_and_verifiable(
    client: httpx.Client, run_worker: Any, settings: Settings, dispatcher: RunningDispatcher
) -> None:
    with Receiver() as receiver:
        job_id = submit(client, receiver.url, metadata={"order": "42"})
        run_worker()
        (got,) = receiver.wait(1)
        payload = Webhook(webhook_signing_secret(settings)).verify(got.body, got.headers)
        assert payload["type"] == "job.succeeded"
        data = payload["data"]
        assert data["id"] == job_id and data["status"] == "succeeded" and data["metadata"] == {"order": "42"}
        assert data["images"][0]["url"].startswith("http") and data["images"][0]["seed"] >= 0
        assert "request" not in data and "Traceback" not in got.body.decode()
        assert got.headers["webhook-id"] == f"msg_{job_id}.succeeded"
        assert got.headers["content-type"] == "application/json"
        log = settled(client, job_id, 1)  # nothing left to send...
        assert len(receiver.received) == 1  # ...and only the terminal event was sent, by default
        assert log["pending"] == 0 and [(d["event"], d["status_code"], d["ok"]) for d in log["data"]] == [
            ("succeeded", 200, True)
        ]


def test_retries_keep_the_id_and_follow_the_schedule(
    client: httpx.Client, run_worker: Any, settings: Settings, dispatcher: RunningDispatcher
) -> None:
    with Receiver([Reply(500), Reply(502), Reply(200)]) as receiver:
        job_id = submit(client, receiver.url)
        run_worker()
        attempts = receiver.wait(3)
        assert len({a.headers["webhook-id"] for a in attempts}) == 1
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.3 * 0.8 and gaps[1] >= 0.6 * 0.8, gaps
        for attempt in attempts:  # each retry is signed afresh, and verifies
            Webhook(webhook_signing_secret(settings)).verify(attempt.body, attempt.headers)
        log = settled(client, job_id, 3)
        assert len(receiver.received) == 3
        # Loopback is reached through the allow-list (an internal network): failures show only that they failed.
        assert [(d["status_code"], d["error"]) for d in log["data"]] == [
            (None, "delivery failed"),
            (None, "delivery failed"),
            (200, None),
        ]
        assert [d["attempt"] for d in log["data"]] == [1, 2, 3]


def test_gives_up_after_the_schedule(client: httpx.Client, run_worker: Any, dispatcher: RunningDispatcher) -> None:
    with Receiver([Reply(500)]) as receiver:
        job_id = submit(client, receiver.url)
        run_worker()
        receiver.wait(4)  # the first attempt and three retries
        log = settled(client, job_id, 4)  # nothing pending: no fifth attempt will come
        assert len(receiver.received) == 4 and len(log["data"]) == 4
        assert log["pending"] == 0 and log["data"][-1]["next_attempt_in"] is None


def test_redirects_are_failures_and_never_followed(
    client: httpx.Client, run_worker: Any, dispatcher: RunningDispatcher
) -> None:
    with Receiver() as target, Receiver([Reply(302, {"Location": "PLACEHOLDER"}), Reply(200)]) as receiver:
        receiver.replies[0].headers["Location"] = target.url
        job_id = submit(client, receiver.url)
        run_worker()
        receiver.wait(2)
        log = settled(client, job_id, 2)["data"]  # the second attempt is logged once its answer came back
        assert target.received == []
        assert not log[0]["ok"] and log[0]["error"] == "delivery failed" and log[1]["ok"]


def test_410_stops_and_retry_after_is_honoured(
    client: httpx.Client, run_worker: Any, dispatcher: RunningDispatcher
) -> None:
    with Receiver([Reply(410)]) as gone, Receiver([Reply(503, {"Retry-After": "2"}), Reply(200)]) as slow:
        gone_id = submit(client, gone.url)
        submit(client, slow.url)
        run_worker()
        first, second = slow.wait(2)
        assert second.at - first.at >= 1.9  # Retry-After (2 s) beats the schedule's 0.3 s
        log = settled(client, gone_id, 1)  # nothing pending after the 410: no retry is scheduled
        assert len(gone.received) == 1 and len(log["data"]) == 1
        assert not log["data"][0]["ok"] and log["data"][0]["next_attempt_in"] is None


def test_progress_and_started_events_when_asked(
    client: httpx.Client, run_worker: Any, dispatcher: RunningDispatcher
) -> None:
    with Receiver() as receiver:
        submit(client, receiver.url, events=["started", "progress", "succeeded"], steps=3)
        run_worker()
        got = receiver.wait(3, predicate=lambda: any(b"job.succeeded" in r.body for r in receiver.received))
        kinds = [json.loads(r.body)["type"] for r in got]
        assert kinds[0] == "job.started" and kinds[-1] == "job.succeeded"
        assert 1 <= kinds.count("job.progress") <= 3  # throttled, best effort


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",  # a name that resolves to loopback
        "http://2130706433/hook",  # 127.0.0.1, decimal
        "http://0177.0.0.1/hook",  # octal
        "http://0x7f.0.0.1/hook",  # hex
        "http://10.1.2.3/hook",
        "http://172.16.5.4/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://224.0.0.1/hook",  # multicast
        "http://0.0.0.0/hook",
        "http://240.0.0.1/hook",  # reserved
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
        "http://[::ffff:7f00:1]/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "ftp://8.8.8.8/hook",
        "http://8.8.8.8:22/hook",  # a port that is not allowed
        "http://user:pw@8.8.8.8/hook",
    ],
)
def test_ssrf_guard_refuses_every_private_address_class_at_submit(
    client: httpx.Client, settings: Settings, url: str
) -> None:
    strict = settings.model_copy(update={"webhook_allowed_networks": []})
    from app.main import create_app
    from tests.conftest import LiveServer

    with LiveServer(create_app(strict)) as server:
        response = httpx.post(f"{server.url}/v1/txt2img", json={**BODY, "webhook": {"url": url}})
    assert response.status_code == 422, (url, response.text)
    assert response.json()["errors"][0]["field"] in ("body.webhook.url",)


def test_the_guard_runs_again_at_delivery(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    """Accepted while loopback was allowed; the dispatcher's policy no longer allows it: never called."""
    strict = WebhookPolicy.build([80, 443], [], [])
    with Receiver() as receiver, RunningDispatcher(settings, policy=strict):
        job_id = submit(client, receiver.url)
        run_worker()
        log = settled(client, job_id, 1)
        assert receiver.received == []
        assert log["data"][0]["error"].startswith("refused") and log["pending"] == 0


def test_a_pending_delivery_survives_a_dispatcher_restart(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    with Receiver() as receiver:
        job_id = submit(client, receiver.url)
        run_worker()  # the delivery is due; no dispatcher runs yet
        with RunningDispatcher(settings, lease_seconds=1.0) as first:
            # The first dispatcher leases the delivery and dies before sending it (simulated: it only claims).
            first.loop.call_soon_threadsafe(first.dispatcher.stopping.set)
        leased = asyncio.run(_claim_only(settings))
        assert leased == [f"{job_id}.succeeded"] or receiver.received
        with RunningDispatcher(settings, lease_seconds=1.0):
            (got,) = receiver.wait(1, timeout=10)
        assert got.headers["webhook-id"] == f"msg_{job_id}.succeeded"


async def _claim_only(settings: Settings) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis_url)
    dispatcher = make_dispatcher(settings, client, lease_seconds=1.0)
    try:
        return await dispatcher.claim(10)
    finally:
        await client.aclose()


def test_redeliver_sends_the_terminal_event_with_a_new_id(
    client: httpx.Client, run_worker: Any, settings: Settings, dispatcher: RunningDispatcher
) -> None:
    with Receiver() as receiver:
        job_id = submit(client, receiver.url)
        run_worker()
        receiver.wait(1)
        answer = client.post(f"/v1/jobs/{job_id}/webhook-deliveries/redeliver")
        assert answer.status_code == 202
        first, second = receiver.wait(2)
        assert first.headers["webhook-id"] != second.headers["webhook-id"]
        assert json.loads(second.body)["type"] == "job.succeeded"
        Webhook(webhook_signing_secret(settings)).verify(second.body, second.headers)
    no_hook = client.post("/v1/txt2img", json=BODY).json()["id"]
    assert client.post(f"/v1/jobs/{no_hook}/webhook-deliveries/redeliver").status_code == 409


def s3_environment(settings: Settings, bucket: str, endpoint: str) -> dict[str, str]:
    """The environment of a `sdserve webhooks` of these settings on an S3 store (the test credentials are in
    ``os.environ``: the ``aws_env`` fixture put them there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    return env | {
        "SDSERVE_REDIS_URL": settings.redis_url,
        "SDSERVE_KEY_PREFIX": settings.key_prefix,
        "SDSERVE_DATA_DIR": str(settings.data_dir),
        "SDSERVE_URL_SIGNING_SECRET": "test-secret",
        "SDSERVE_STORE": "s3",
        "SDSERVE_S3_BUCKET": bucket,
        "SDSERVE_S3_PREFIX": "hooks",
        "SDSERVE_S3_ENDPOINT_URL": endpoint,
        "SDSERVE_S3_REGION": REGION,
        "SDSERVE_S3_ADDRESSING_STYLE": "path",
        "SDSERVE_WEBHOOK_ALLOWED_NETWORKS": ",".join(settings.webhook_allowed_networks),
        "SDSERVE_DISPATCHER_METRICS_PORT": "0",
        "SDSERVE_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    }


def test_the_dispatcher_process_links_to_the_s3_store(
    nanio_server: S3Server,
    aws_env: None,
    settings: Settings,
    redis_client: redis.Redis,
    pipelines: Any,
    tmp_path: Path,
) -> None:
    """`sdserve webhooks` with SDSERVE_STORE=s3 (its real start-up, as a process): the webhook of a job a worker
    ran on the same bucket links to presigned S3 URLs that download. (The dispatcher used to build a local
    store whatever the settings said, so its links pointed at the gateway, which had no such file: 404.)"""
    from app.main import create_app

    bucket = nanio_server.new_bucket()
    env = s3_environment(settings, bucket, nanio_server.endpoint)
    s3_settings = settings.model_copy(
        update={
            "store": "s3",
            "s3_bucket": bucket,
            "s3_prefix": "hooks",
            "s3_endpoint_url": nanio_server.endpoint,
            "s3_region": REGION,
            "s3_addressing_style": "path",
        }
    )
    log = tmp_path / "webhooks.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdserve.cli", "webhooks"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with (
            Receiver() as receiver,
            LiveServer(create_app(s3_settings)) as gateway,
            httpx.Client(base_url=gateway.url, timeout=30) as client,
        ):
            job_id = submit(client, receiver.url, num_images=2)
            run_burst(s3_settings, redis_client, pipelines)
            (got,) = receiver.wait(1, timeout=60)  # the process starts (imports) first
            payload = Webhook(webhook_signing_secret(settings)).verify(got.body, got.headers)
            assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id, payload
            images = payload["data"]["images"]
            assert [image["index"] for image in images] == [0, 1]
            pixels = []
            for image in images:
                url = urlsplit(image["url"])
                assert f"{url.scheme}://{url.netloc}" == nanio_server.endpoint, image["url"]  # the bucket's own
                assert url.path == f"/{bucket}/hooks/outputs/{job_id}/1/{image['index']}.png"
                assert "X-Amz-Signature=" in url.query  # presigned (nanio checks the signature)
                answer = httpx.get(image["url"], timeout=10)
                assert answer.status_code == 200, answer.text
                picture = decode(answer.content)
                assert picture.format == "PNG" and picture.size == (64, 64)
                pixels.append(picture.convert("RGB").tobytes())
            assert pixels[0] != pixels[1]  # two images, two seeds
            assert settled(client, job_id, 1)["data"][0]["ok"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert f"s3://{bucket}/hooks" in output, output  # it said which store it opened
