"""Dynamic batching: compatible queued jobs share forward passes, each gets the image it would get alone
(within the float noise of the batch: the bound the docs promise, the same as for image i of a job)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import run_burst
from tests.integration.test_txt2img_flow import assert_reproduced_alone
from worker.images.steps import StepCallback

BODY = {"width": 64, "height": 64, "steps": 4, "scheduler": "euler"}


def image(job: dict[str, Any], index: int = 0) -> np.ndarray:
    data = httpx.get(job["images"][index]["url"]).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def started_batch(redis_client: redis.Redis, settings: Settings, job_id: str) -> int:
    entries = redis_client.xrange(Keys(settings.key_prefix).events(job_id))
    started = next(json.loads(f[b"data"]) for _, f in entries if f[b"event"] == b"started")
    return int(started.get("batch", 1))


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_batched_jobs_get_the_images_they_would_get_alone(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any, model: str
) -> None:
    bodies = [
        {**BODY, "model": model, "prompt": "a red lighthouse", "seed": 11, "negative_prompt": "blurry"},
        {**BODY, "model": model, "prompt": "a green forest", "seed": 12, "num_images": 2, "negative_prompt": "dark"},
        {**BODY, "model": model, "prompt": "a blue sea", "seed": 13, "style": "anime"},  # the style's negative
    ]
    alone = []
    for body in bodies:  # one at a time, batching off
        job_id = client.post("/v1/txt2img", json=body).json()["id"]
        run_burst(settings, redis_client, pipelines)
        alone.append(client.get(f"/v1/jobs/{job_id}").json())
    ids = [client.post("/v1/txt2img", json=body).json()["id"] for body in bodies]
    batching = settings.model_copy(update={"max_batch_images": 8, "batch_linger_ms": 0})
    run_burst(batching, redis_client, pipelines)
    together = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [started_batch(redis_client, settings, i) for i in ids] == [3, 3, 3]  # one batch of three jobs
    for one, batched in zip(alone, together, strict=True):
        assert batched["status"] == "succeeded"
        assert [i["seed"] for i in batched["images"]] == [i["seed"] for i in one["images"]]
        for index in range(len(one["images"])):
            assert_reproduced_alone(image(batched, index), image(one, index))
    manifest = httpx.get(together[1]["manifest_url"]).json()
    assert manifest["effective"]["batch_size"] == 4 and manifest["effective"]["seeds"] == [12, 13]


def test_incompatible_jobs_wait_their_turn_and_nothing_starves(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    small = {**BODY, "prompt": "a"}
    other = {**BODY, "prompt": "b", "width": 128}
    order = [small, other, small, small, other]
    ids = [client.post("/v1/txt2img", json=body).json()["id"] for body in order]
    run_burst(settings.model_copy(update={"max_batch_images": 2, "batch_linger_ms": 0}), redis_client, pipelines)
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    sizes = [started_batch(redis_client, settings, i) for i in ids]
    assert sizes == [2, 2, 2, 1, 2]  # (1st, 3rd), then (2nd, 5th), then 4th alone: at most two images a pass
    started = [j["started_at"] for j in jobs]
    assert started[0] <= started[1] <= started[3]  # every job ran in or before the batch after its turn


def test_canceling_one_job_of_a_batch_leaves_the_others(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, pipelines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [client.post("/v1/txt2img", json={**BODY, "prompt": p, "steps": 6}).json()["id"] for p in "abc"]
    report = StepCallback.report

    def cancel_second(self: StepCallback, step: int, latents: Any = None) -> None:
        if step == 2:
            assert [m.job.id for m in self.members] == ids  # one pipeline call for the three jobs
            client.post(f"/v1/jobs/{ids[1]}/cancel")
        report(self, step, latents)

    monkeypatch.setattr(StepCallback, "report", cancel_second)
    run_burst(settings.model_copy(update={"max_batch_images": 8, "batch_linger_ms": 0}), redis_client, pipelines)
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "canceled", "succeeded"]
    assert jobs[1]["images"] == [] and not (settings.objects_dir / "outputs" / ids[1]).exists()
