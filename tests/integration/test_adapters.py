"""LoRA swaps per request, embeddings, styles, several models per worker, and no state leaking between jobs."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from sdserve.keys import Keys
from sdserve.registry import Registry
from sdserve.settings import Settings
from tests.conftest import LiveServer, run_burst
from tests.images import decode

pytestmark = pytest.mark.integration

BASE = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 4, "seed": 77}


def run_jobs(client: httpx.Client, run_worker: Any, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = []
    for body in bodies:
        response = client.post("/v1/txt2img", json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    for job in jobs:
        assert job["status"] == "succeeded", job
    return jobs


def png(job: dict[str, Any]) -> bytes:
    return httpx.get(job["images"][0]["url"]).content


def pixels(job: dict[str, Any]) -> bytes:
    """The decoded pixels (the PNG's text chunks name the request, so equal images of different
    requests differ as files)."""
    return decode(png(job)).convert("RGB").tobytes()


def test_lora_changes_the_output_scale_zero_is_the_base_and_nothing_leaks(
    client: httpx.Client, run_worker: Any
) -> None:
    first, with_lora, zero, after, kohya, both = run_jobs(
        client,
        run_worker,
        [
            BASE,
            {**BASE, "loras": [{"name": "tiny-detail", "scale": 1.0}]},
            {**BASE, "loras": [{"name": "tiny-detail", "scale": 0.0}]},
            BASE,  # right after LoRA jobs: must be the bare base model again
            {**BASE, "loras": [{"name": "tiny-kohya"}]},  # the kohya/A1111 layout, default scale
            {**BASE, "loras": [{"name": "tiny-detail", "scale": 1.0}, {"name": "tiny-kohya", "scale": 0.8}]},
        ],
    )
    base = png(first)
    assert png(with_lora) != base
    assert pixels(zero) == pixels(first)  # scale 0: exactly the base output
    assert png(after) == base  # no adapter survives its job
    assert png(kohya) != base
    combined = png(both)
    assert combined not in (base, png(with_lora), png(kohya))  # two adapters combine
    assert kohya["request"]["loras"] == [{"name": "tiny-kohya", "scale": 0.8}]  # default scale resolved
    manifest = httpx.get(both["manifest_url"]).json()
    names = [(a["name"], a["scale"]) for a in manifest["adapters"]]
    assert names == [("tiny-detail", 1.0), ("tiny-kohya", 0.8)]
    assert all(len(str(a["sha256"])) == 64 for a in manifest["adapters"])
    assert both["timings"]["adapters_ms"] is not None


def test_adapters_reset_after_a_failed_job(
    client: httpx.Client, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import runtime

    cls, recipe = runtime.TASKS["txt2img"]
    calls = {"n": 0}

    def failing_once(ctx: Any, request: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return recipe(ctx, request)

    monkeypatch.setitem(runtime.TASKS, "txt2img", (cls, failing_once))
    ids = [
        client.post("/v1/txt2img", json=body).json()["id"]
        for body in (BASE, {**BASE, "loras": [{"name": "tiny-detail"}]}, BASE)
    ]
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "failed", "succeeded"]
    assert png(jobs[0]) == png(jobs[2])


def test_embedding_tokens_and_styles(client: httpx.Client, run_worker: Any) -> None:
    plain, sparkle, styled = run_jobs(
        client,
        run_worker,
        [BASE, {**BASE, "prompt": "a <tiny-sparkle> lighthouse at dusk"}, {**BASE, "style": "anime"}],
    )
    assert png(sparkle) != png(plain)
    assert png(styled) != png(plain)
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
    plain, lora = run_jobs(client, run_worker, [xl, {**xl, "loras": [{"name": "tiny-sdxl-detail"}]}])
    assert png(plain) != png(lora)
    refused = client.post("/v1/txt2img", json={**xl, "loras": [{"name": "tiny-detail"}]})
    assert refused.status_code == 422


def test_resident_adapters_stay_within_their_bound(settings: Settings, redis_client: redis.Redis) -> None:
    from worker.device import DeviceConfig
    from worker.pipelines import PipelineCache

    cache = PipelineCache(
        Registry.load(None),
        DeviceConfig.from_settings(Settings(device="cpu", _env_file=None)),  # type: ignore[call-arg]
        settings.models_dir,
        max_loras=1,
    )
    registry = cache.registry
    model = cache.load("tiny")
    assert model.adapters is not None
    for name in ("tiny-detail", "tiny-kohya", "tiny-detail"):
        model.adapters.activate([(registry.lora(name), 1.0)])
        model.adapters.reset()
        assert len(model.adapters.resident) <= 1
    assert model.adapters.loads == 3 and model.adapters.evictions == 2
    model.adapters.activate([(registry.lora("tiny-detail"), 1.0)])
    assert model.adapters.hits == 1  # loaded once, reused


def test_several_models_per_worker_within_a_memory_budget(
    settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    from worker.pipelines import PipelineCache

    sizes = {name: pipelines.load(name).bytes for name in ("tiny", "tiny-sdxl")}
    roomy = PipelineCache(Registry.load(None), pipelines.device, settings.models_dir)
    for name in ("tiny", "tiny-sdxl", "tiny", "tiny-sdxl"):
        roomy.load(name)
    assert roomy.loads == {"tiny": 1, "tiny-sdxl": 1}  # switching does not reload a resident model
    tight = PipelineCache(
        Registry.load(None), pipelines.device, settings.models_dir, memory_budget=max(sizes.values()) + 1
    )
    for name in ("tiny", "tiny-sdxl", "tiny"):
        tight.load(name)
        assert tight.resident_bytes() <= tight.memory_budget  # type: ignore[operator]
    assert tight.loads == {"tiny": 2, "tiny-sdxl": 1} and tight.unloads == {"tiny": 1, "tiny-sdxl": 1}
    assert tight.loaded() == ["tiny"]


def test_one_worker_serves_two_models_and_reports_them(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    from worker import runtime

    seen: list[dict[str, Any]] = []
    cls, recipe = runtime.TASKS["txt2img"]

    def observing(ctx: Any, request: Any) -> Any:
        seen.append({m["name"]: m for m in client.get("/v1/models").json()["data"]})
        return recipe(ctx, request)

    runtime.TASKS["txt2img"] = (cls, observing)
    try:
        jobs = run_jobs(client, lambda: run_worker(name="two-models"), [BASE, {**BASE, "model": "tiny-sdxl"}])
    finally:
        runtime.TASKS["txt2img"] = (cls, recipe)
    assert [j["model"] for j in jobs] == ["tiny", "tiny-sdxl"]
    last = seen[-1]
    assert last["tiny"]["workers"] == ["two-models"] and last["tiny-sdxl"]["workers"] == ["two-models"]
    assert last["tiny"]["warm"] and last["tiny-sdxl"]["warm"]
    assert decode(png(jobs[1])).size == (64, 64)


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
        time.sleep(1.1)  # the gateway caches what is served for a second
        assert c.post("/v1/txt2img", json=BASE).status_code == 202  # served lately: queued while none is live
        assert c.post("/v1/txt2img", json={**BASE, "model": "tiny-sdxl"}).status_code == 503
    assert redis_client.zscore(Keys(settings.key_prefix).served_models(), "tiny") is not None
