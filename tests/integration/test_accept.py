"""Accepting a job: concurrent submits share Lua calls (group commit) and each still gets its own place;
a job whose writes fail is never queued, and does not take its neighbours down with it."""

from __future__ import annotations

import asyncio

import httpx
import redis

from sdserve.jobs.record import ANONYMOUS
from sdserve.keys import Keys
from sdserve.settings import Settings

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


async def _submit_many(base_url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v1/txt2img", json=body) for body in bodies))


def test_concurrent_submits_each_get_their_place(gateway: str, settings: Settings, redis_client: redis.Redis) -> None:
    answers = asyncio.run(_submit_many(gateway, [{**BODY, "seed": i} for i in range(40)]))
    assert [a.status_code for a in answers] == [202] * 40
    jobs = [a.json() for a in answers]
    assert sorted(j["queue_position"] for j in jobs) == list(range(40))
    queue_key = Keys(settings.key_prefix).queue_key("tiny")
    queued = [raw.decode() for raw in redis_client.lrange(queue_key, 0, -1)]
    by_position = [j["id"] for j in sorted(jobs, key=lambda j: j["queue_position"])]
    assert queued == by_position  # the position each answer gave is the job's place in the queue
    for job in jobs:  # and the record each answer describes is the one stored
        stored = httpx.get(f"{gateway}/v1/jobs/{job['id']}").json()
        assert stored["request"]["seed"] == job["request"]["seed"] and stored["status"] == "queued"


def test_a_job_whose_writes_fail_is_never_queued(gateway: str, settings: Settings, redis_client: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    queue_key = keys.queue_key("tiny")
    redis_client.set(keys.index("image", ANONYMOUS), "not a sorted set")  # its ZADD fails with WRONGTYPE
    refused = httpx.post(f"{gateway}/v1/txt2img", json=BODY)
    assert refused.status_code == 500
    assert refused.headers["content-type"] == "application/problem+json"
    assert redis_client.llen(queue_key) == 0
    redis_client.delete(keys.index("image", ANONYMOUS))
    accepted = httpx.post(f"{gateway}/v1/txt2img", json=BODY)
    assert accepted.status_code == 202 and accepted.json()["queue_position"] == 0
    assert redis_client.llen(queue_key) == 1
