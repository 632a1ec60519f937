"""txt2img end to end: real HTTP gateway, real Redis/RQ, a real worker running the tiny pipeline."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import numpy as np
import redis
from PIL import Image
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from app.jobs.events import decode_entry
from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import LiveServer

BODY = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 12}


def submit(client: httpx.Client, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    response = client.post("/v1/txt2img", json=body or BODY, **kwargs)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    return job


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def test_accepted_job_is_queued_then_runs_to_a_signed_png(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    job = submit(client)
    assert job["status"] == "queued"
    assert job["queue_position"] == 0
    assert job["request"]["seed"] is not None  # chosen at submit and reported
    assert job["request"]["scheduler"] == "euler" and job["request"]["model"] == "tiny"

    # The queue carries a JSON-serialised RQ job that names the worker function by dotted path.
    rq_job = RQJob.fetch(job["id"], connection=redis_client, serializer=JSONSerializer)
    assert rq_job.func_name == "worker.engine.slot.run_job"
    assert rq_job.args == [job["id"]]
    assert rq_job.origin == Keys(settings.key_prefix).queue_name("tiny")
    raw = redis_client.hget(rq_job.key, "data")
    assert raw is not None and b"worker.engine.slot.run_job" in __import__("zlib").decompress(raw)

    run_worker()

    done = get_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 12, "total": 12, "fraction": 1.0}
    assert done["queue_position"] is None
    assert [img["index"] for img in done["images"]] == [0]
    image = done["images"][0]
    assert image["seed"] == job["request"]["seed"]
    assert (image["width"], image["height"]) == (256, 256)
    for name in ("queued_ms", "load_ms", "inference_ms", "decode_ms", "upload_ms", "run_ms", "total_ms"):
        assert done["timings"][name] is not None and done["timings"][name] >= 0, name

    png = fetch(image["url"])
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(png.content))
    assert picture.format == "PNG" and picture.size == (256, 256)
    params = picture.info["parameters"]
    assert params.startswith("a lighthouse at dusk\n")
    assert f"Seed: {image['seed']}" in params and "Steps: 12" in params and "Size: 256x256" in params
    embedded = json.loads(picture.info["sdserve"])
    assert embedded["seed"] == image["seed"] and embedded["model"] == "tiny"

    manifest = fetch(done["manifest_url"]).json()
    assert manifest["job_id"] == job["id"]
    assert manifest["model"]["name"] == "tiny"
    assert manifest["request"]["scheduler"] == "euler"
    assert manifest["images"][0]["seed"] == image["seed"]
    assert set(manifest["versions"]) >= {"torch", "diffusers", "transformers", "python"}
    assert manifest["timings"]["inference_ms"] > 0
    assert manifest["effective"]["scheduler_class"] == "EulerDiscreteScheduler"


def test_same_seed_gives_byte_identical_images(client: httpx.Client, run_worker: Any) -> None:
    first = submit(client, {**BODY, "seed": 1234})
    second = submit(client, {**BODY, "seed": 1234})
    other = submit(client, {**BODY, "seed": 1235})
    run_worker()
    blobs = [fetch(get_job(client, j["id"])["images"][0]["url"]).content for j in (first, second, other)]
    assert blobs[0] == blobs[1]
    assert blobs[0] != blobs[2]


ALONE_MAX_DIFF = 2
"""Image i of a batch against its seed run alone: no channel value differs by more than this (of 255)..."""
ALONE_MAX_CHANGED = 0.02
"""...and at most this share of the pixels differ at all (CPU matmul blocking depends on the batch size)."""


def rgb(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(url).content)).convert("RGB"), dtype=np.int16)


def assert_reproduced_alone(batched: np.ndarray, alone: np.ndarray) -> None:
    """What the docs promise for an image of a batch asked for alone with its reported seed."""
    diff = np.abs(batched - alone)
    changed = float((diff.max(-1) > 0).mean())
    assert diff.max() <= ALONE_MAX_DIFF and changed <= ALONE_MAX_CHANGED, (int(diff.max()), changed)


def test_each_image_reports_its_own_seed_and_reproduces_alone(client: httpx.Client, run_worker: Any) -> None:
    small = {**BODY, "width": 128, "height": 128, "steps": 4}
    many = submit(client, {**small, "num_images": 4})
    first = many["request"]["seed"]
    again = submit(client, {**small, "num_images": 4, "seed": first})  # the same request and seed
    run_worker()
    done, repeated = get_job(client, many["id"]), get_job(client, again["id"])
    seeds = [img["seed"] for img in done["images"]]
    assert seeds == [(first + i) % 2**32 for i in range(4)]
    assert [fetch(i["url"]).content for i in done["images"]] == [fetch(i["url"]).content for i in repeated["images"]]
    # Each image, asked for alone with its reported seed, comes out the same (within float noise of the batch).
    alone = [submit(client, {**small, "seed": seed}) for seed in seeds]
    run_worker()
    for image, single in zip(done["images"], alone, strict=True):
        assert_reproduced_alone(rgb(image["url"]), rgb(get_job(client, single["id"])["images"][0]["url"]))


def test_jobs_run_in_the_order_they_were_accepted(client: httpx.Client, run_worker: Any) -> None:
    ids = [submit(client, {**BODY, "width": 64, "height": 64, "steps": 2})["id"] for _ in range(5)]
    positions = [get_job(client, i)["queue_position"] for i in ids]
    assert positions == [0, 1, 2, 3, 4]
    run_worker()
    started = [get_job(client, i)["started_at"] for i in ids]
    assert started == sorted(started)


def test_events_stream_records_the_whole_life(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    job = submit(client, {**BODY, "width": 64, "height": 64, "steps": 5})
    run_worker()
    entries = redis_client.xrange(Keys(settings.key_prefix).events(job["id"]))
    events = [decode_entry(i, f) for i, f in entries]
    names = [e.name.value for e in events]
    assert names == ["queued", "started"] + ["progress"] * 5 + ["succeeded"]
    assert [e.data["step"] for e in events if e.name.value == "progress"] == [1, 2, 3, 4, 5]


def test_png_jpeg_and_webp_outputs(client: httpx.Client, run_worker: Any) -> None:
    jobs = {
        fmt: submit(client, {**BODY, "width": 64, "height": 64, "steps": 2, "output": {"format": fmt}})
        for fmt in ("png", "jpeg", "webp")
    }
    run_worker()
    for fmt, job in jobs.items():
        image = get_job(client, job["id"])["images"][0]
        response = fetch(image["url"])
        assert response.headers["content-type"] == f"image/{fmt}"
        assert Image.open(io.BytesIO(response.content)).format == fmt.upper()


def test_styles_wrap_the_prompt(client: httpx.Client, run_worker: Any) -> None:
    job = submit(client, {**BODY, "width": 64, "height": 64, "steps": 2, "style": "pixel-art"})
    run_worker()
    done = get_job(client, job["id"])
    manifest = fetch(done["manifest_url"]).json()
    assert manifest["effective"]["prompt"].startswith("pixel-art a lighthouse at dusk")
    assert "realistic" in manifest["effective"]["negative_prompt"]


def test_every_scheduler_the_model_offers_runs(client: httpx.Client, run_worker: Any) -> None:
    names = client.get("/v1/schedulers", params={"model": "tiny"}).json()["data"]
    assert {"euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm"} <= set(names)
    assert names == next(m for m in client.get("/v1/models").json()["data"] if m["name"] == "tiny")["schedulers"]
    assert set(names) <= set(client.get("/v1/schedulers").json()["data"])  # without a model: every name
    ids = {n: submit(client, {**BODY, "width": 64, "height": 64, "steps": 3, "scheduler": n})["id"] for n in names}
    run_worker()
    for name, job_id in ids.items():
        done = get_job(client, job_id)
        assert done["status"] == "succeeded", (name, done["error"])
        assert done["request"]["scheduler"] == name


def test_schedulers_of_an_unknown_model_are_a_422(client: httpx.Client) -> None:
    response = client.get("/v1/schedulers", params={"model": "sd-nope"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/unknown-name"
    assert [e["field"] for e in problem["errors"]] == ["query.model"]


def test_a_scheduler_the_model_does_not_offer_is_refused(
    settings: Settings, redis_client: redis.Redis, tmp_path: Any
) -> None:
    from app.main import create_app

    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(
        '[models.tiny-few]\nsource = "builtin:tiny"\nnative_size = 64\ndefault_steps = 4\n'
        'default_scheduler = "unipc"\nschedulers = ["unipc", "euler"]\n'
    )
    custom = settings.model_copy(update={"registry_file": registry_file})
    with LiveServer(create_app(custom)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        offered = c.get("/v1/schedulers", params={"model": "tiny-few"}).json()["data"]
        assert offered == ["euler", "unipc"]  # in sdserve's order
        model = next(m for m in c.get("/v1/models").json()["data"] if m["name"] == "tiny-few")
        assert model["schedulers"] == offered and model["default_scheduler"] == "unipc"
        assert "ddim" in c.get("/v1/schedulers").json()["data"]  # a name sdserve knows...
        refused = c.post("/v1/txt2img", json={"model": "tiny-few", "prompt": "x", "scheduler": "ddim"})
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == ["body.scheduler"]  # ...that this model lacks
        assert "unipc" in refused.json()["detail"]  # the refusal names what it offers
        accepted = c.post("/v1/txt2img", json={"model": "tiny-few", "prompt": "x", "scheduler": "euler"})
        assert accepted.status_code == 202, accepted.text
        assert c.post("/v1/txt2img", json={"model": "tiny-few", "prompt": "x"}).json()["request"]["scheduler"] == (
            "unipc"
        )
        assert c.post("/v1/txt2img", json={**BODY, "scheduler": "ddim"}).status_code == 202  # tiny offers it
