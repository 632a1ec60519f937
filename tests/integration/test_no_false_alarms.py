"""No false alarms: a burst against a healthy Redis is served (or refused as overload, never as an outage), and
the first requests after a Redis restart are served on fresh connections, not answered 503."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.settings import Settings
from tests.conftest import LiveServer, free_port

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def burst(url: str, count: int, concurrency: int) -> list[httpx.Response]:
    # A client (and a connection) per request: a kept-alive connection that the server times out just as the
    # client reuses it fails on the client's side (no answer at all), and httpx's one pool shared by 200 threads
    # closing unkept connections has failed a read with EBADF; both are the client's races, not the server's.
    def post(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as client:
            return client.post("/v1/txt2img", json={**BODY, "seed": i})

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(post, range(count)))


def test_a_burst_of_500_submits_gets_no_5xx(settings: Settings, redis_client: redis.Redis) -> None:
    with LiveServer(create_app(settings)) as server:
        answers = burst(server.url, 500, 200)
    codes = [a.status_code for a in answers]
    assert all(code == 202 for code in codes), {c: codes.count(c) for c in set(codes)}


def test_a_pool_too_small_for_the_burst_answers_overloaded_not_unavailable(
    settings: Settings, redis_client: redis.Redis
) -> None:
    tight = settings.model_copy(update={"redis_max_connections": 4, "redis_pool_timeout_seconds": 0.01})
    with LiveServer(create_app(tight)) as server:
        answers = burst(server.url, 300, 100)
    refused = [a for a in answers if a.status_code != 202]
    assert refused, "the pool never ran dry: make it smaller"
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"] == "/problems/overloaded" and answer.headers["retry-after"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], list[str]]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    _wait(url)
    try:
        yield url, proc, argv
    finally:
        proc.terminate()
        proc.wait(10)


def _wait(url: str) -> None:
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise AssertionError("redis did not start")


def test_after_a_redis_restart_the_stale_connections_are_not_an_outage(
    settings: Settings, own_redis: tuple[str, subprocess.Popen[bytes], list[str]]
) -> None:
    url, proc, argv = own_redis
    local = settings.model_copy(update={"redis_url": url})
    with LiveServer(create_app(local)) as server:
        warm = burst(server.url, 40, 20)  # the pool holds many open connections now
        assert all(a.status_code == 202 for a in warm)
        proc.terminate()
        proc.wait(10)
        restarted = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            _wait(url)
            after = burst(server.url, 40, 20)  # each stale connection meets its first command now
        finally:
            restarted.terminate()
            restarted.wait(10)
    codes = [a.status_code for a in after]
    assert all(code == 202 for code in codes), {c: codes.count(c) for c in set(codes)}
