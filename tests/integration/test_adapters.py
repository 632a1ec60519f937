"""LoRA swaps per request, embeddings, styles, several models per worker, and no state leaking between jobs.

Every effect is judged on the decoded pixels: the PNG's text chunks name the request, so two files of
different requests always differ, whatever their pixels.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from sdserve.images.requests import Txt2ImgRequest
from sdserve.keys import Keys
from sdserve.registry import Registry, RegistryHolder
from sdserve.settings import Settings
from tests.conftest import LiveServer, run_burst, wait_for
from tests.images import decode
from worker.images.recipes import RECIPES
from worker.images.recipes.base import Inputs, RecipeContext
from worker.images.recipes.txt2img import Txt2Img
from worker.images.steps import StepCallback

BASE = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 4, "seed": 77}


def submit_all(client: httpx.Client, bodies: list[dict[str, Any]]) -> list[str]:
    ids = []
    for body in bodies:
        response = client.post("/v1/txt2img", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def run_jobs(client: httpx.Client, run_worker: Any, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = submit_all(client, bodies)
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    for job in jobs:
        assert job["status"] == "succeeded", job
    return jobs


def pixels(job: dict[str, Any]) -> bytes:
    """The decoded RGB pixels of a job's first image (the PNG's text chunks name the request, so equal
    images of different requests differ as files)."""
    return decode(httpx.get(job["images"][0]["url"]).content).convert("RGB").tobytes()


def test_lora_changes_the_output_scale_zero_is_the_base_and_nothing_leaks(
    client: httpx.Client, run_worker: Any
) -> None:
    detail = {"name": "tiny-detail", "scale": 1.0}
    jobs = run_jobs(
        client,
        run_worker,
        [
            BASE,
            {**BASE, "loras": [detail]},
            BASE,  # right after a LoRA job: must be the bare base model again
            {**BASE, "loras": [{"name": "tiny-detail", "scale": 0.0}]},
            {**BASE, "loras": [{"name": "tiny-kohya"}]},  # the kohya/A1111 layout, default scale
            BASE,
            {**BASE, "loras": [detail, {"name": "tiny-kohya", "scale": 0.8}]},
            BASE,
        ],
    )
    first, with_lora, after_lora, zero, kohya, after_kohya, both, after_both = jobs
    base = pixels(first)
    assert pixels(with_lora) != base
    for after in (after_lora, after_kohya, after_both):  # no LoRA survives its job
        assert pixels(after) == base
    assert pixels(zero) == base  # scale 0: exactly the base output
    assert pixels(kohya) not in (base, pixels(with_lora))
    assert pixels(both) not in (base, pixels(with_lora), pixels(kohya))  # two LoRAs combine
    assert kohya["request"]["loras"] == [{"name": "tiny-kohya", "scale": 0.8}]  # default scale resolved
    manifest = httpx.get(both["manifest_url"]).json()
    assert [(a["name"], a["scale"]) for a in manifest["loras"]] == [("tiny-detail", 1.0), ("tiny-kohya", 0.8)]
    assert all(len(str(a["sha256"])) == 64 for a in manifest["loras"])
    assert httpx.get(first["manifest_url"]).json()["loras"] == []
    assert both["timings"]["adapters_ms"] is not None


def test_loras_reset_after_a_job_that_failed_while_they_were_active(
    client: httpx.Client, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = StepCallback.report
    failed_at: list[int] = []

    def fail_the_lora_job(self: StepCallback, step: int, latents: Any = None) -> None:
        if step == 2 and self.members[0].job.record.request["loras"]:  # mid-denoise, its LoRA applied
            failed_at.append(step)
            raise RuntimeError("boom")
        report(self, step, latents)

    monkeypatch.setattr(StepCallback, "report", fail_the_lora_job)
    ids = submit_all(client, [BASE, {**BASE, "loras": [{"name": "tiny-detail"}]}, BASE])
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "failed", "succeeded"]
    assert failed_at == [2] and jobs[1]["error"]["type"] == "/problems/internal"
    assert pixels(jobs[0]) == pixels(jobs[2])


def test_embedding_tokens_and_styles(client: httpx.Client, run_worker: Any) -> None:
    plain, sparkle, styled, after = run_jobs(
        client,
        run_worker,
        [BASE, {**BASE, "prompt": "a <tiny-sparkle> lighthouse at dusk"}, {**BASE, "style": "anime"}, BASE],
    )
    assert pixels(sparkle) != pixels(plain)
    assert pixels(styled) not in (pixels(plain), pixels(sparkle))
    assert pixels(after) == pixels(plain)
    listing = client.get("/v1/loras").json()
    assert {"tiny-detail", "tiny-kohya", "tiny-sdxl-detail"} <= {lora["name"] for lora in listing["data"]}
    assert "<tiny-sparkle>" in {e["token"] for e in listing["embeddings"]}
    styles = {s["name"] for s in client.get("/v1/styles").json()["data"]}
    assert {"photographic", "anime", "cinematic", "digital-art", "pixel-art"} <= styles


@pytest.mark.parametrize(
    ("loras", "field", "status"),
    [
        ([{"name": "nope"}], "body.loras.0.name", 422),
        ([{"name": "tiny-sdxl-detail"}], "body.loras.0.name", 422),  # wrong family for tiny
        ([{"name": "tiny-detail", "scale": 2.5}], "body.loras.0.scale", 422),
        ([{"name": "../../etc/passwd"}], "body.loras.0.name", 422),
        ([{"name": f"l{i}"} for i in range(5)], "body.loras", 422),
    ],
)
def test_bad_lora_requests_are_422_at_the_gateway(
    client: httpx.Client, loras: list[dict[str, Any]], field: str, status: int
) -> None:
    response = client.post("/v1/txt2img", json={**BASE, "loras": loras})
    assert response.status_code == status, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_sdxl_lora(client: httpx.Client, run_worker: Any) -> None:
    xl = {**BASE, "model": "tiny-sdxl"}
    plain, lora, after = run_jobs(client, run_worker, [xl, {**xl, "loras": [{"name": "tiny-sdxl-detail"}]}, xl])
    assert pixels(plain) != pixels(lora)
    assert pixels(after) == pixels(plain)
    refused = client.post("/v1/txt2img", json={**xl, "loras": [{"name": "tiny-detail"}]})
    assert refused.status_code == 422


def test_resident_loras_stay_within_their_bound(settings: Settings, redis_client: redis.Redis) -> None:
    from worker.models.device import DeviceConfig
    from worker.models.pipelines import PipelineCache

    cache = PipelineCache(
        RegistryHolder(lambda: Registry.load(None, "tiny")),
        DeviceConfig.from_settings(Settings(device="cpu", _env_file=None)),  # type: ignore[call-arg]
        settings.models_dir,
        max_loras=1,
    )
    registry = cache.registry
    model = cache.load("tiny")
    loras = model.loras
    assert loras is not None
    for name in ("tiny-detail", "tiny-kohya", "tiny-detail"):
        loras.activate([(registry.lora(name), 1.0)])
        loras.reset()
        assert len(loras.resident) <= 1
    assert loras.loads == 3 and loras.evictions == 2
    loras.activate([(registry.lora("tiny-detail"), 1.0)])
    assert loras.hits == 1  # loaded once, reused
    loras.reset()


def test_several_models_per_worker_within_a_memory_budget(
    settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    from worker.models.pipelines import PipelineCache

    holder = RegistryHolder(lambda: Registry.load(None, "tiny"))
    sizes = {name: pipelines.load(name).bytes for name in ("tiny", "tiny-sdxl")}
    roomy = PipelineCache(holder, pipelines.device, settings.models_dir)
    for name in ("tiny", "tiny-sdxl", "tiny", "tiny-sdxl"):
        roomy.load(name)
    assert roomy.loads == {"tiny": 1, "tiny-sdxl": 1}  # switching does not reload a resident model
    tight = PipelineCache(holder, pipelines.device, settings.models_dir, memory_budget=max(sizes.values()) + 1)
    for name in ("tiny", "tiny-sdxl", "tiny"):
        tight.load(name)
        assert tight.resident_bytes() <= tight.memory_budget  # type: ignore[operator]
    assert tight.loads == {"tiny": 2, "tiny-sdxl": 1} and tight.unloads == {"tiny": 1, "tiny-sdxl": 1}
    assert tight.loaded() == ["tiny"]


def test_one_worker_serves_two_models_and_reports_them(
    client: httpx.Client, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    class Observing(Txt2Img):
        def inputs(self, ctx: RecipeContext, request: Txt2ImgRequest) -> Inputs:
            seen.append({m["name"]: m for m in client.get("/v1/models").json()["data"]})
            return super().inputs(ctx, request)

    monkeypatch.setitem(RECIPES, "txt2img", Observing())
    jobs = run_jobs(client, lambda: run_worker(name="two-models"), [BASE, {**BASE, "model": "tiny-sdxl"}])
    assert [j["model"] for j in jobs] == ["tiny", "tiny-sdxl"]
    assert len(seen) == 2
    last = seen[-1]
    assert last["tiny"]["workers"] == ["two-models"] and last["tiny-sdxl"]["workers"] == ["two-models"]
    assert last["tiny"]["warm"] and last["tiny-sdxl"]["warm"]
    assert decode(httpx.get(jobs[1]["images"][0]["url"]).content).size == (64, 64)


def test_a_model_no_worker_serves_is_refused_unless_queued_by_policy(
    settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    from app.main import create_app

    strict = settings.model_copy(update={"unserved_models": "refuse", "worker_models": ["tiny"]})
    with LiveServer(create_app(strict)) as server, httpx.Client(base_url=server.url) as c:
        refused = c.post("/v1/txt2img", json={**BASE, "model": "tiny-sdxl"})
        assert refused.status_code == 503 and refused.json()["type"] == "/problems/model-unavailable"
        assert refused.headers["retry-after"]
        assert c.post("/v1/txt2img", json=BASE).status_code == 503  # no worker has ever served tiny here either
        run_burst(strict, redis_client, pipelines)  # a worker serving tiny comes and goes (queue empty)
        # The gateway caches what is served for a second: once it looks again, tiny is queued while none is live.
        wait_for(lambda: c.post("/v1/txt2img", json=BASE).status_code == 202, timeout=3, interval=0.1)
        assert c.post("/v1/txt2img", json={**BASE, "model": "tiny-sdxl"}).status_code == 503
    assert redis_client.zscore(Keys(settings.key_prefix).served_queues(), "tiny") is not None
