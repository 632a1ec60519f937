"""The worked examples of README and docs/api.md: one job per task on the `demo` model.

Run with ``SDSERVE_WRITE_EXAMPLES=1`` to refresh the images in docs/images/examples/ (the documentation
then shows what the code does now); otherwise they go to a temporary folder."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdserve.settings import Settings
from tests.images import data_uri, encode
from train.dataset import COLOURS
from train.pixels import read

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images" / "examples"
COMMON = {"model": "demo", "steps": 20, "seed": 7}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with a worker that also serves the `demo` model."""
    return settings.model_copy(update={"worker_models": ["tiny", "demo"]})


def run(client: httpx.Client, run_worker: Any, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Image.Image]:
    created = client.post(path, json={**COMMON, **body})
    assert created.status_code == 202, created.text
    run_worker()
    job = client.get(f"/v1/jobs/{created.json()['id']}").json()
    assert job["status"] == "succeeded", (job["error"], job["timings"])
    return job, Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content)).convert("RGB")


def test_worked_examples(client: httpx.Client, run_worker: Any, tmp_path: Path) -> None:
    OUT = DOCS if os.environ.get("SDSERVE_WRITE_EXAMPLES") == "1" else tmp_path  # noqa: N806
    OUT.mkdir(parents=True, exist_ok=True)
    _, scene = run(client, run_worker, "/v1/txt2img", {"prompt": "a large red circle on a blue background"})
    assert scene.size == (256, 256)
    drawn = read(np.asarray(scene))
    assert (drawn.background, drawn.colour) == ("blue", "red"), drawn
    scene.save(OUT / "txt2img.png")

    _, varied = run(
        client, run_worker, "/v1/img2img",
        {"prompt": "a large red circle on a green background", "image": data_uri(encode(scene)), "strength": 0.6},
    )  # fmt: skip
    assert varied.size == (256, 256)
    varied.save(OUT / "img2img.png")

    mask = Image.new("L", scene.size, 0)
    ImageDraw.Draw(mask).rectangle((150, 20, 240, 110), fill=255)
    mask.save(OUT / "inpaint-mask.png")
    job, painted = run(
        client, run_worker, "/v1/inpaint",
        {"prompt": "a large yellow star in the center on a blue background", "image": data_uri(encode(scene)),
         "mask": data_uri(encode(mask)), "mask_blur": 4, "inpaint_area": "masked", "padding": 32,
         "return_mask": True},
    )  # fmt: skip
    final = np.asarray(Image.open(io.BytesIO(httpx.get(job["mask_url"]).content)))
    keep = final == 0
    assert np.array_equal(np.asarray(painted)[keep], np.asarray(scene)[keep])
    # A yellow star was drawn inside the masked box: it holds clearly yellow pixels, the scene held none.
    box = (slice(20, 110), slice(150, 240))
    assert _share(np.asarray(painted)[box], "yellow") > 0.03
    assert _share(np.asarray(scene), "yellow") < 0.002
    painted.save(OUT / "inpaint.png")

    _, wider = run(
        client, run_worker, "/v1/outpaint",
        {"prompt": "a large red circle on a blue background", "image": data_uri(encode(scene)), "left": 64,
         "right": 64, "fill": "blur", "feather": 16},
    )  # fmt: skip
    assert wider.size == (384, 256)
    assert np.array_equal(np.asarray(wider)[:, 64 + 16 : 64 + 256 - 16], np.asarray(scene)[:, 16:240])
    # The new margins continue the blue background.
    for margin in (np.asarray(wider)[:, :64], np.asarray(wider)[:, -64:]):
        assert _share(margin, "blue") > 0.9
    wider.save(OUT / "outpaint.png")


def _share(pixels: np.ndarray, colour: str) -> float:
    """The fraction of pixels whose nearest named colour is ``colour``."""
    names = list(COLOURS)
    palette = np.array([COLOURS[name] for name in names], dtype=np.float32)
    flat = pixels.reshape(-1, 1, 3).astype(np.float32)
    nearest = np.linalg.norm(flat - palette[None], axis=-1).argmin(axis=1)
    return float((nearest == names.index(colour)).mean())


def test_lora_and_style_on_demo(client: httpx.Client, run_worker: Any) -> None:
    """The default model takes a LoRA and a style like any SD 1.x model, and the next job is the bare model's."""
    body = {**COMMON, "prompt": "a red circle on a blue background", "width": 128, "height": 128, "steps": 8}
    ids = []
    for extra in ({}, {"loras": [{"name": "demo-detail", "scale": 1.0}]}, {}, {"style": "pixel-art"}):
        created = client.post("/v1/txt2img", json={**body, **extra})
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, jobs
    plain, lora, after, styled = (
        np.asarray(Image.open(io.BytesIO(httpx.get(job["images"][0]["url"]).content)).convert("RGB")) for job in jobs
    )
    assert not np.array_equal(plain, lora)  # the LoRA changes the image
    assert np.array_equal(plain, after)  # and is gone for the next job
    assert not np.array_equal(plain, styled)
    refused = client.post("/v1/txt2img", json={**body, "loras": [{"name": "tiny-detail"}]})
    assert refused.status_code == 422  # a LoRA made for another model
