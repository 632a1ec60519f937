"""Trainings through HTTP with a real worker: a training is a job (progress with loss, SSE with the loss curve
and validation images, cancel, delete, list, per-key isolation), its result is usable by name at once, and bad
input is refused at submit leaving nothing behind. (What a training teaches is tests/demo's to show.)"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from app.main import create_app
from sdserve.access.api_keys import hash_key, new_key
from sdserve.settings import Settings
from tests.conftest import LiveServer, background_worker, wait_for

ALICE, BOB = new_key(), new_key()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def trainer_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "api_keys": [f"alice:{hash_key(ALICE)}", f"bob:{hash_key(BOB)}"],
            "worker_models": ["tiny"],
            "training_models": ["tiny"],
            "unserved_models": "queue",
        }
    )


@pytest.fixture
def url(trainer_settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    with LiveServer(create_app(trainer_settings)) as server:
        yield server.url


def png(seed: int, side: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_zip(count: int = 4, captions: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            archive.writestr(f"img{i}.png", png(i))
            if captions and i % 2 == 0:
                archive.writestr(f"img{i}.txt", f"a photo of zwx thing number {i}")
    return buffer.getvalue()


def upload_dataset(url: str, key: str, data: bytes | None = None) -> httpx.Response:
    files = {"file": ("set.zip", data if data is not None else dataset_zip(), "application/zip")}
    return httpx.post(f"{url}/v1/uploads", files=files, data={"kind": "dataset"}, headers=auth(key), timeout=30)


def image_of(url: str, job_id: str) -> np.ndarray:
    job = wait_for(
        lambda: (j := httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(ALICE)).json())["status"] == "succeeded" and j,
        timeout=90,
    )
    return np.asarray(Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content)).convert("RGB"))


def body(dataset: str, **extra: Any) -> dict[str, Any]:
    return {
        "method": "lora", "base_model": "tiny", "name": "zwx-style", "dataset": dataset, "trigger_word": "zwx",
        "hyperparameters": {
            "steps": 6, "batch_size": 2, "rank": 4, "resolution": 64, "checkpoint_every": 3, "learning_rate": 1e-3,
        },
        "validation": {"prompts": ["a zwx thing"], "every": 3, "steps": 2},
        **extra,
    }  # fmt: skip


def test_bad_trainings_are_refused_at_submit_and_leave_nothing(url: str, trainer_settings: Settings) -> None:
    dataset = upload_dataset(url, ALICE).json()["id"]
    objects = trainer_settings.data_dir / "objects"
    before = sorted(p.relative_to(objects) for p in objects.rglob("*") if p.is_file())

    def post(payload: dict[str, Any], key: str = ALICE) -> httpx.Response:
        return httpx.post(f"{url}/v1/trainings", json=payload, headers=auth(key), timeout=30)

    cases = [
        (body(dataset, base_model="no-such-model"), 422, "unknown-name"),
        (body(dataset, trigger_word=" \u200b "), 422, "validation-error"),
        (body(dataset, method="textual_inversion", trigger_word="<zwx>"), 422, "validation-error"),
        (
            body(dataset, method="textual_inversion", trigger_word="zwx", initializer_token="dog"),
            422,
            "validation-error",
        ),
        (body(dataset, name="../etc"), 422, "validation-error"),
        (body(dataset, name="demo-detail"), 409, "conflict"),  # a deployment LoRA's name
        (body("upl_" + "0" * 32), 422, "unusable-input"),
        (body(dataset, caption_template="no placeholder"), 422, "validation-error"),
        (body(dataset, hyperparameters={"steps": 0}), 422, "validation-error"),
        (body(dataset, hyperparameters={"rank": 1000}), 422, "validation-error"),
    ]
    for payload, status, slug in cases:
        answer = post(payload)
        assert answer.status_code == status, (payload, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == f"/problems/{slug}", answer.text
    assert post(body(dataset), key=BOB).json()["type"] == "/problems/unusable-input"  # Alice's dataset
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", png(1))
        archive.writestr("a.txt", b" " * (50 * 1024 * 1024))
    for data in (bomb.getvalue(), b"not a zip", dataset_zip(0)):
        answer = upload_dataset(url, ALICE, data)
        assert answer.status_code == 422 and answer.json()["type"] == "/problems/invalid-request", answer.text
    after = sorted(p.relative_to(objects) for p in objects.rglob("*") if p.is_file())
    assert after == before
    listed = httpx.get(f"{url}/v1/trainings", headers=auth(ALICE)).json()
    assert listed["data"] == []


def test_a_training_is_a_job_and_its_lora_is_usable_by_name_at_once(
    url: str, trainer_settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    dataset = upload_dataset(url, ALICE).json()
    assert dataset["kind"] == "dataset" and dataset["images"] == 4 and dataset["captioned"] == 2
    assert httpx.get(f"{url}/v1/uploads/{dataset['id']}", headers=auth(BOB)).status_code == 404
    created = httpx.post(
        f"{url}/v1/trainings", json=body(dataset["id"]), headers={**auth(ALICE), "Idempotency-Key": "t1"}, timeout=30
    )
    assert created.status_code == 202, created.text
    training = created.json()
    assert training["object"] == "training" and training["status"] == "queued"
    hp = training["request"]["hyperparameters"]
    assert hp["steps"] == 6 and hp["rank"] == 4 and hp["alpha"] == 4 and hp["learning_rate"] > 0  # resolved
    again = httpx.post(
        f"{url}/v1/trainings", json=body(dataset["id"]), headers={**auth(ALICE), "Idempotency-Key": "t1"}, timeout=30
    )
    assert again.json()["id"] == training["id"] and again.headers["idempotent-replayed"] == "true"
    taken = httpx.post(f"{url}/v1/trainings", json=body(dataset["id"]), headers=auth(ALICE), timeout=30)
    assert taken.status_code == 409 and "zwx-style" in taken.json()["detail"]  # being trained: reserved
    assert httpx.get(f"{url}/v1/trainings/{training['id']}", headers=auth(BOB)).status_code == 404

    job = {"prompt": "a zwx thing", "model": "tiny", "steps": 2, "width": 64, "height": 64, "seed": 5}
    before = httpx.post(f"{url}/v1/txt2img", json=job, headers=auth(ALICE)).json()["id"]  # runs first: priority
    with background_worker(trainer_settings, redis_client, pipelines):
        done = wait_for(
            lambda: (
                (t := httpx.get(f"{url}/v1/trainings/{training['id']}", headers=auth(ALICE)).json())["status"]
                in ("succeeded", "failed")
                and t
            ),
            timeout=180,
            interval=0.3,
        )
        assert done["status"] == "succeeded", done
        events = []
        with httpx.stream("GET", f"{url}/v1/trainings/{training['id']}/events", headers=auth(ALICE), timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        progress = [e for e in events if "loss" in e]
        assert progress and progress[-1]["step"] == 6 and all(np.isfinite(e["loss"]) for e in progress)
        rounds = [e["validation"] for e in events if "validation" in e]
        assert [r["step"] for r in rounds] == [3, 6]
        assert httpx.get(rounds[0]["images"][0]["url"]).headers["content-type"] == "image/png"
        assert any("checkpoint" in e for e in events)
        assert done["progress"]["step"] == 6 and done["progress"]["eta_seconds"] == 0
        assert [v["step"] for v in done["validation"]] == [3, 6] and done["loss_curve"][-1]["step"] == 6
        adapter = done["adapter"]
        assert adapter["kind"] == "lora" and adapter["name"] == "zwx-style" and adapter["trigger_words"] == ["zwx"]
        file = httpx.get(adapter["url"])
        assert file.status_code == 200 and len(file.content) == adapter["bytes"]
        manifest = httpx.get(done["manifest_url"]).json()
        assert manifest["dataset"]["images"] == 4 and manifest["dataset"]["sha256"] == dataset["sha256"]
        assert manifest["hyperparameters"]["rank"] == 4 and manifest["versions"]["peft"] != "unknown"
        assert len(manifest["loss_curve"]) >= 1 and manifest["base_model"] == "tiny"

        mine = httpx.get(f"{url}/v1/loras", headers=auth(ALICE)).json()
        assert "zwx-style" in json.dumps(mine)
        assert "zwx-style" not in json.dumps(httpx.get(f"{url}/v1/loras", headers=auth(BOB)).json())
        used = httpx.post(f"{url}/v1/txt2img", json={**job, "loras": [{"name": "zwx-style"}]}, headers=auth(ALICE))
        assert used.status_code == 202, used.text
        refused = httpx.post(f"{url}/v1/txt2img", json={**job, "loras": [{"name": "zwx-style"}]}, headers=auth(BOB))
        assert refused.status_code == 422 and refused.json()["type"] == "/problems/unknown-name"
        after = httpx.post(f"{url}/v1/txt2img", json=job, headers=auth(ALICE)).json()["id"]
        zero = httpx.post(
            f"{url}/v1/txt2img", json={**job, "loras": [{"name": "zwx-style", "scale": 0.0}]}, headers=auth(ALICE)
        ).json()["id"]
        pixels = {name: image_of(url, job_id) for name, job_id in
                  [("before", before), ("used", used.json()["id"]), ("after", after), ("zero", zero)]}  # fmt: skip
    assert np.array_equal(pixels["before"], pixels["after"])  # the training left the warm pipeline as it was
    assert np.array_equal(pixels["before"], pixels["zero"])  # the trained LoRA at scale 0 is the base model
    assert not np.array_equal(pixels["before"], pixels["used"])  # and at scale 1 it changes what is drawn
    listed = httpx.get(f"{url}/v1/trainings?status=succeeded", headers=auth(ALICE)).json()
    assert [t["id"] for t in listed["data"]] == [training["id"]]
    assert httpx.delete(f"{url}/v1/trainings/{training['id']}", headers=auth(ALICE)).status_code == 204
    assert "zwx-style" not in json.dumps(httpx.get(f"{url}/v1/loras", headers=auth(ALICE)).json())
    gone = httpx.post(f"{url}/v1/txt2img", json={**job, "loras": [{"name": "zwx-style"}]}, headers=auth(ALICE))
    assert gone.status_code == 422
    assert httpx.get(adapter["url"]).status_code in (403, 404)


def test_multipart_training_and_cancel_within_a_step(
    url: str, trainer_settings: Settings, redis_client: redis.Redis, pipelines: Any, tmp_path: Path
) -> None:
    request = body("upl_" + "0" * 32)
    request.pop("dataset")
    request["name"] = "zwx-long"
    request["hyperparameters"] = {**request["hyperparameters"], "steps": 5000, "checkpoint_every": 1000}
    request.pop("validation")
    files = [("files", (f"img{i}.png", png(i), "image/png")) for i in range(3)]
    files.append(("files", ("img0.txt", b"a zwx caption", "text/plain")))
    created = httpx.post(
        f"{url}/v1/trainings", data={"request": json.dumps(request)}, files=files, headers=auth(ALICE), timeout=30
    )
    assert created.status_code == 202, created.text
    training = created.json()
    with background_worker(trainer_settings, redis_client, pipelines):
        wait_for(
            lambda: (httpx.get(f"{url}/v1/trainings/{training['id']}", headers=auth(ALICE)).json()["progress"] or {})
            .get("step", 0) >= 2,
            timeout=120,
        )  # fmt: skip
        httpx.post(f"{url}/v1/trainings/{training['id']}/cancel", headers=auth(ALICE))
        ended = wait_for(
            lambda: (
                (t := httpx.get(f"{url}/v1/trainings/{training['id']}", headers=auth(ALICE)).json())["status"]
                != "running"
                and t
            ),
            timeout=30,
        )
    assert ended["status"] == "canceled" and ended["adapter"] is None
    assert ended["progress"]["step"] < 5000
    # the name is free again
    retry = httpx.post(
        f"{url}/v1/trainings", data={"request": json.dumps(request)}, files=files, headers=auth(ALICE), timeout=30
    )
    assert retry.status_code == 202, retry.text


def test_a_model_warmed_up_as_sdserve_worker_does_can_be_trained(models_cache: Path) -> None:
    """`sdserve worker` warms its models (a generation in inference mode) before taking trainings: the warm-up
    must leave the weights trainable, and the session must hand the pipeline back as it found it."""
    from sdserve.registry import Registry, RegistryHolder
    from worker.models.device import DeviceConfig
    from worker.models.pipelines import PipelineCache
    from worker.trainings.session import TrainingSession, defaults

    cache = PipelineCache(
        RegistryHolder(lambda: Registry.load(None, "tiny")),
        DeviceConfig.from_settings(Settings(device="cpu", _env_file=None)),  # type: ignore[call-arg]
        models_cache,
    )
    cache.warm("tiny")
    pipe = cache.load("tiny").pipe
    assert not any(p.is_inference() for p in pipe.unet.parameters())
    examples = [(Image.open(io.BytesIO(png(i))).convert("RGB"), "a zwx thing") for i in range(2)]
    hp = defaults("lora", "sd1")
    from dataclasses import replace

    session = TrainingSession(
        pipe, "lora", examples, replace(hp, steps=2, batch_size=1, resolution=64, rank=2, alpha=2.0),
        trigger_word="zwx",
    )  # fmt: skip
    try:
        assert np.isfinite(session.step()["loss"])
    finally:
        session.close()
