"""The smaller holes of issue 15, each seen as a client sees it over real HTTP: duplicate JSON keys, strict
integers, slow headers and bodies, webhook ports (``:0``, allow-listed hosts on other ports), redelivery
rate limits, metrics bound to the configured host, and nothing created by a refused request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import Counter
from pydantic import ValidationError

from app.main import create_app
from app.server import server_options
from sdserve.keys import Keys
from sdserve.observe.metrics import Metrics, serve_metrics
from sdserve.settings import Settings
from tests.conftest import LiveServer, free_port

BODY: dict[str, Any] = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def jobs_in_redis(redis_client: redis.Redis, settings: Settings) -> int:
    return sum(1 for _ in redis_client.scan_iter(match=Keys(settings.key_prefix).job("*"), count=1000))


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    return body


# --- the body ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "a lighthouse", "prompt": "a bomb", "width": 64, "height": 64}',
        b'{"prompt": "x", "width": 64, "height": 64, "webhook": {"url": "https://a.example/h", "url": "http://b"}}',
    ],
    ids=["top-level", "nested"],
)
def test_a_key_given_twice_is_refused_and_nothing_is_created(
    client: httpx.Client, redis_client: redis.Redis, settings: Settings, raw: bytes
) -> None:
    response = client.post("/v1/txt2img", content=raw, headers={"content-type": "application/json"})
    body = assert_problem(response, 422, "validation-error")
    assert "twice" in response.text or "duplicate" in response.text.lower(), body
    assert jobs_in_redis(redis_client, settings) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", True), ("steps", "20"), ("steps", 20.5), ("width", "64"), ("seed", False), ("num_images", "2")],
)
def test_integers_are_strict(
    client: httpx.Client, redis_client: redis.Redis, settings: Settings, field: str, value: Any
) -> None:
    body = assert_problem(client.post("/v1/txt2img", json={**BODY, field: value}), 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == [f"body.{field}"], body
    assert jobs_in_redis(redis_client, settings) == 0


def test_a_real_integer_is_still_accepted(client: httpx.Client) -> None:
    assert client.post("/v1/txt2img", json={**BODY, "steps": 3, "seed": 0}).status_code == 202


# --- slow clients ------------------------------------------------------------------------------------
@pytest.fixture
def deadlines(settings: Settings, redis_client: redis.Redis) -> Iterator[LiveServer]:
    """The gateway as `sdserve gateway` serves it (its own protocol and middleware), with 1 s deadlines."""
    quick = settings.model_copy(update={"header_timeout_seconds": 1.0, "body_timeout_seconds": 1.0})
    with LiveServer(create_app(quick), **server_options(quick.header_timeout_seconds)) as server:
        yield server


def read_all(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (and whether it did within ``within`` s)."""
    sock.settimeout(within)
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    return b"".join(chunks), True


def test_headers_that_trickle_in_get_the_connection_closed(deadlines: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", deadlines.port)) as sock:
        sock.sendall(b"POST /v1/txt2img HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(3):  # still sending, a header line now and then: not enough
            time.sleep(0.4)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        data, closed = read_all(sock, within=5)
    assert closed, "the connection stayed open"
    assert time.monotonic() - started < 5
    assert b"202" not in data.split(b"\r\n", 1)[0]


def test_a_body_that_trickles_in_gets_408_and_the_connection_closed(
    deadlines: LiveServer, redis_client: redis.Redis, settings: Settings
) -> None:
    with socket.create_connection(("127.0.0.1", deadlines.port)) as sock:
        sock.sendall(
            b"POST /v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
            b'{"prompt": "a'
        )
        data, closed = read_all(sock, within=8)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert b"application/problem+json" in head and b"/problems/request-timeout" in payload, data
    assert closed, "the connection stayed open after the 408"
    assert jobs_in_redis(redis_client, settings) == 0


def test_a_normal_client_is_not_hurt_by_the_deadlines(deadlines: LiveServer) -> None:
    with httpx.Client(base_url=deadlines.url, timeout=10) as c:
        assert c.post("/v1/txt2img", json=BODY).status_code == 202
        time.sleep(1.5)  # idle between requests is not slowness: the next request on a new connection works
        assert c.get("/healthz").status_code == 200


# --- webhook egress ----------------------------------------------------------------------------------
@pytest.fixture
def one_port(settings: Settings, redis_client: redis.Redis) -> Iterator[tuple[str, int]]:
    """A gateway whose operator allow-listed 127.0.0.1 on one port only."""
    port = free_port()
    allowed = settings.model_copy(
        update={"webhook_allowed_hosts": [f"127.0.0.1:{port}"], "webhook_allowed_networks": []}
    )
    with LiveServer(create_app(allowed)) as server:
        yield server.url, port


def test_an_allow_listed_host_is_allowed_on_its_port_only(one_port: tuple[str, int]) -> None:
    url, port = one_port
    ok = httpx.post(f"{url}/v1/txt2img", json={**BODY, "webhook": {"url": f"http://127.0.0.1:{port}/hook"}})
    assert ok.status_code == 202, ok.text
    for other in (6379, port + 1, 8000):  # Redis, a neighbour, the admin API's usual port
        refused = httpx.post(f"{url}/v1/txt2img", json={**BODY, "webhook": {"url": f"http://127.0.0.1:{other}/h"}})
        body = assert_problem(refused, 422, "unsafe-webhook-url")
        assert body["errors"][0]["field"] == "body.webhook.url"


@pytest.mark.parametrize("url", ["https://hooks.example.com:0/h", "http://8.8.8.8:0/hook", "http://[2001:db8::1]:0/"])
def test_port_zero_is_refused(client: httpx.Client, url: str) -> None:
    assert_problem(client.post("/v1/txt2img", json={**BODY, "webhook": {"url": url}}), 422, "unsafe-webhook-url")


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("webhook_allowed_hosts", "hooks.internal"),
        ("webhook_allowed_hosts", "hooks.internal:0"),
        ("webhook_allowed_networks", "10.0.0.0/8"),
        ("webhook_allowed_networks", "10.0.0.0/8:9000-8000"),
    ],
)
def test_allow_list_entries_must_name_their_ports(settings: Settings, name: str, entry: str) -> None:
    with pytest.raises(ValidationError, match="port"):
        Settings.model_validate({**settings.model_dump(), name: [entry]})


def test_redeliveries_are_rate_limited_per_key(one_port: tuple[str, int]) -> None:
    url, port = one_port
    with httpx.Client(base_url=url, timeout=10) as c:
        job = c.post("/v1/txt2img", json={**BODY, "webhook": {"url": f"http://127.0.0.1:{port}/hook"}}).json()
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
        answers = [c.post(f"/v1/jobs/{job['id']}/webhook-deliveries/redeliver") for _ in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 202, answers[0].text
    assert 429 in codes, codes
    limited = answers[codes.index(429)]
    assert_problem(limited, 429, "rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert codes.count(202) <= 5, codes  # the burst


# --- metrics -----------------------------------------------------------------------------------------
def test_metrics_bind_to_the_configured_host() -> None:
    metrics = Metrics()
    Counter("sdserve_edge_probe_total", "a probe", registry=metrics.registry).inc()
    port = free_port()
    serve_metrics(metrics, "127.0.0.2", port, "worker")  # another loopback address than the usual one
    assert "sdserve_edge_probe_total 1.0" in httpx.get(f"http://127.0.0.2:{port}/metrics", timeout=5).text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
