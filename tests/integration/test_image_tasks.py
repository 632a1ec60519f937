"""img2img, inpaint and outpaint, end to end, for both model families (tiny: SD 1.x, tiny-sdxl: SDXL).

The tiny models have random weights, so what is checked is geometry and exactness, not beauty:
output sizes, strength's effect against the VAE's own round trip, bit-identical pixels wherever the
final mask is 0, paste-back position, and the preserved original region of an outpaint.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.images import data_uri, decode, encode, pattern, rect_mask

MODELS = ["tiny", "tiny-sdxl"]


def submit(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return job


def pixels(url: str) -> np.ndarray:
    return np.asarray(decode(httpx.get(url).content).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("model", MODELS)
def test_img2img_output_size_defaults_to_the_input_rounded_to_8(
    client: httpx.Client, run_worker: Any, model: str
) -> None:
    image = data_uri(encode(pattern(100, 75)))
    default = submit(client, "/v1/img2img", {"model": model, "prompt": "a cat", "image": image, "steps": 4})
    sized = {
        mode: submit(
            client,
            "/v1/img2img",
            {
                "model": model,
                "prompt": "a cat",
                "image": image,
                "steps": 4,
                "width": 64,
                "height": 96,
                "resize_mode": mode,
            },
        )
        for mode in ("resize", "crop", "fill")
    }
    run_worker()
    job = finished(client, default)
    assert (job["request"]["width"], job["request"]["height"]) == (104, 72)
    assert pixels(job["images"][0]["url"]).shape == (72, 104, 3)
    assert job["request"]["image"].startswith("upl_")  # the queue carries ids, not pixels
    for mode, job_id in sized.items():
        done = finished(client, job_id)
        assert pixels(done["images"][0]["url"]).shape == (96, 64, 3), mode


def _vae_round_trip(pipelines: Any, model: str, image: Image.Image) -> np.ndarray:
    pipe = pipelines.load(model).pipe
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        latents = pipe.vae.encode(x).latent_dist.mode()
        out = pipe.vae.decode(latents).sample
    array = ((out[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()
    return array.astype(np.int16)


@pytest.mark.parametrize("model", MODELS)
def test_img2img_strength_near_zero_keeps_the_input_and_one_departs(
    client: httpx.Client, run_worker: Any, pipelines: Any, model: str
) -> None:
    source = pattern(128, 128, seed=3)
    image = data_uri(encode(source))
    body = {"model": model, "prompt": "a cat", "image": image, "steps": 20, "seed": 5}
    low = submit(client, "/v1/img2img", {**body, "strength": 0.05})
    high = submit(client, "/v1/img2img", {**body, "strength": 1.0})
    run_worker()
    low_job, high_job = finished(client, low), finished(client, high)
    assert low_job["progress"]["total"] == 1 and high_job["progress"]["total"] == 20  # steps × strength
    reference = _vae_round_trip(pipelines, model, source)  # what "no change" looks like through this VAE
    near = np.abs(pixels(low_job["images"][0]["url"]) - reference).mean()
    far = np.abs(pixels(high_job["images"][0]["url"]) - reference).mean()
    assert near < far / 2, (near, far)
    # The tiny models' VAE is a trained one: a nearly untouched image comes back close to the input itself.
    original = np.asarray(source, dtype=np.int16)
    assert np.abs(pixels(low_job["images"][0]["url"]) - original).mean() < 20
    assert np.abs(pixels(high_job["images"][0]["url"]) - original).mean() > 30


@pytest.mark.parametrize("model", MODELS)
def test_inpaint_keeps_unmasked_pixels_bit_identical(client: httpx.Client, run_worker: Any, model: str) -> None:
    source = pattern(120, 88, seed=1)  # not a multiple of 8: processed padded, cropped back
    mask = rect_mask(120, 88, (30, 20, 70, 60))
    body = {
        "model": model, "prompt": "a yellow star", "image": data_uri(encode(source)),
        "mask": data_uri(encode(mask)), "mask_grow": 3, "mask_blur": 2, "return_mask": True, "steps": 6,
    }  # fmt: skip
    job_id = submit(client, "/v1/inpaint", body)
    run_worker()
    job = finished(client, job_id)
    out = pixels(job["images"][0]["url"])
    final = np.asarray(decode(httpx.get(job["mask_url"]).content))
    original = np.asarray(source, dtype=np.int16)
    assert out.shape == original.shape
    keep = final == 0
    assert np.array_equal(out[keep], original[keep])  # bit for bit where the final mask is 0
    inside = final == 255
    assert inside.sum() > 0.5 * 40 * 40
    assert (np.abs(out[inside] - original[inside]).sum(-1) > 0).mean() > 0.9  # and the masked part changed
    # The final mask is the drawn box, grown by 3 and blurred: nothing far outside, all of the box inside.
    ys, xs = np.nonzero(final)
    assert xs.min() >= 30 - 3 - 8 and xs.max() <= 69 + 3 + 8 and ys.min() >= 20 - 3 - 8 and ys.max() <= 59 + 3 + 8
    assert (final[23:57, 33:67] >= 254).all()  # the drawn box, away from the blurred rim, is repainted fully


@pytest.mark.parametrize("model", MODELS)
def test_inpaint_masked_area_pastes_back_in_place(client: httpx.Client, run_worker: Any, model: str) -> None:
    source = pattern(256, 192, seed=2)
    mask = rect_mask(256, 192, (180, 130, 220, 170))
    body = {
        "model": model, "prompt": "a red circle", "image": data_uri(encode(source)), "mask": data_uri(encode(mask)),
        "mask_blur": 0, "inpaint_area": "masked", "padding": 16, "return_mask": True, "steps": 4,
    }  # fmt: skip
    job_id = submit(client, "/v1/inpaint", body)
    run_worker()
    job = finished(client, job_id)
    out = pixels(job["images"][0]["url"])
    original = np.asarray(source, dtype=np.int16)
    changed = np.abs(out - original).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 180 and xs.max() < 220 and ys.min() >= 130 and ys.max() < 170  # only where masked
    assert changed[130:170, 180:220].mean() > 0.9
    manifest = httpx.get(job["manifest_url"]).json()
    assert manifest["effective"]["crop_box"] == [164, 114, 236, 186]
    assert manifest["effective"]["inpaint_area"] == "masked"


def test_inpaint_with_the_alpha_channel_as_mask(client: httpx.Client, run_worker: Any) -> None:
    rgba = pattern(96, 96, seed=4).convert("RGBA")
    alpha = np.full((96, 96), 255, dtype=np.uint8)
    alpha[10:40, 50:90] = 0
    rgba.putalpha(Image.fromarray(alpha))
    body = {"prompt": "sky", "image": data_uri(encode(rgba)), "mask_source": "alpha", "mask_blur": 0, "steps": 3}
    job_id = submit(client, "/v1/inpaint", body)
    run_worker()
    out = pixels(finished(client, job_id)["images"][0]["url"])
    original = np.asarray(rgba.convert("RGB"), dtype=np.int16)
    changed = np.abs(out - original).sum(-1) > 0
    assert not changed[alpha == 255].any()
    assert changed[alpha == 0].mean() > 0.9


@pytest.mark.parametrize("model", MODELS)
def test_outpaint_geometry_is_exact_and_the_original_is_kept(client: httpx.Client, run_worker: Any, model: str) -> None:
    source = pattern(100, 75, seed=6)
    margins = {"left": 13, "right": 0, "top": 7, "bottom": 20}
    feather = 6
    bodies = {
        fill: {"model": model, "prompt": "a wide beach", "image": data_uri(encode(source)), **margins,
               "feather": feather, "fill": fill, "steps": 4, "return_mask": True}
        for fill in ("edge", "blur", "noise")
    }  # fmt: skip
    ids = {fill: submit(client, "/v1/outpaint", body) for fill, body in bodies.items()}
    run_worker()
    original = np.asarray(source, dtype=np.int16)
    for fill, job_id in ids.items():
        job = finished(client, job_id)
        out = pixels(job["images"][0]["url"])
        assert out.shape == (75 + 7 + 20, 100 + 13 + 0, 3), fill
        assert (job["request"]["width"], job["request"]["height"]) == (113, 102)
        region = out[7 : 7 + 75, 13 : 13 + 100]
        # Outside the feather band (6 px from the left, top and bottom seams; the right side was not extended)
        inner = (slice(feather, 75 - feather), slice(feather, 100))
        assert np.array_equal(region[inner], original[inner]), fill
        new_area = np.ones(out.shape[:2], bool)
        new_area[7 : 7 + 75, 13 : 13 + 100] = False
        mask = np.asarray(decode(httpx.get(job["mask_url"]).content))
        assert (mask[new_area] == 255).all() and (mask[7 + feather : 7 + 75 - feather, 13 + feather :] == 0).all()


def test_a_dedicated_inpainting_checkpoint_is_used_as_such(
    settings: Any, redis_client: Any, tmp_path: Any, pipelines: Any
) -> None:
    from sdserve.registry import Registry, RegistryHolder
    from tests.conftest import LiveServer
    from worker.models.pipelines import PipelineCache

    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(
        '[models.tiny-inpaint]\nsource = "builtin:tiny-inpaint"\ninpainting = true\nnative_size = 128\n'
    )
    custom = settings.model_copy(update={"registry_file": registry_file, "worker_models": ["tiny-inpaint"]})
    from app.main import create_app

    with LiveServer(create_app(custom)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        refused = c.post("/v1/txt2img", json={"model": "tiny-inpaint", "prompt": "x"})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.model"
        source = pattern(64, 64)
        body = {
            "model": "tiny-inpaint",
            "prompt": "x",
            "image": data_uri(encode(source)),
            "mask": data_uri(encode(rect_mask(64, 64, (8, 8, 40, 40)))),
            "mask_blur": 0,
            "steps": 3,
        }
        job_id = submit(c, "/v1/inpaint", body)
        from tests.conftest import run_burst

        holder = RegistryHolder(lambda: Registry.load(registry_file, custom.default_model))
        cache = PipelineCache(holder, pipelines.device, pipelines.models_dir)
        run_burst(custom, redis_client, cache)
        job = finished(c, job_id)
        manifest = httpx.get(job["manifest_url"]).json()
        assert manifest["effective"]["pipeline_class"] == "StableDiffusionInpaintPipeline"
        assert cache.load("tiny-inpaint").pipe.unet.config.in_channels == 9
        out = pixels(job["images"][0]["url"])
        keep = np.ones((64, 64), bool)
        keep[8:40, 8:40] = False
        assert np.array_equal(out[keep], np.asarray(source, dtype=np.int16)[keep])


def test_image_tasks_reuse_the_loaded_weights(client: httpx.Client, run_worker: Any, pipelines: Any) -> None:
    image = data_uri(encode(pattern(64, 64)))
    mask = data_uri(encode(rect_mask(64, 64, (0, 0, 32, 32))))
    for path, extra in (("/v1/img2img", {}), ("/v1/inpaint", {"mask": mask}), ("/v1/outpaint", {"left": 16})):
        submit(client, path, {"prompt": "x", "image": image, "steps": 2, **extra})
    loaded_before = dict(pipelines._loaded)
    run_worker()
    base = pipelines.load("tiny")
    assert pipelines._loaded.keys() >= loaded_before.keys()
    assert base is loaded_before.get("tiny", base)
    for kind in ("img2img", "inpaint"):
        view = base.view("euler", kind)
        assert view.unet is base.pipe.unet and view.vae is base.pipe.vae and view.text_encoder is base.pipe.text_encoder
