"""Prompts longer than the text encoder reads (77 tokens) are encoded in chunks, not cut: their tail counts."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from tests.images import decode

HEAD = ", ".join(f"a red circle number {i}" for i in range(14))  # about 85 tokens: past the encoder's 77
BASE = {"width": 64, "height": 64, "steps": 3, "seed": 5}


def pixels(job: dict[str, Any]) -> np.ndarray:
    return np.asarray(decode(httpx.get(job["images"][0]["url"]).content).convert("RGB"), dtype=np.int16)


def run(client: httpx.Client, run_worker: Any, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [client.post("/v1/txt2img", json=body).json()["id"] for body in bodies]
    run_worker()
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    return jobs


def test_the_tail_of_a_long_prompt_changes_the_image(client: httpx.Client, run_worker: Any) -> None:
    for model in ("tiny", "tiny-sdxl"):
        one, other, again = run(
            client,
            run_worker,
            [
                {**BASE, "model": model, "prompt": f"{HEAD}, on a blue background"},
                {**BASE, "model": model, "prompt": f"{HEAD}, on a yellow background with a green star"},
                {**BASE, "model": model, "prompt": f"{HEAD}, on a blue background"},
            ],
        )
        assert np.abs(pixels(one) - pixels(other)).max() > 0, model  # past 77 tokens, the words still count
        assert np.array_equal(pixels(one), pixels(again)), model  # and the same long prompt is reproducible
        manifest = httpx.get(one["manifest_url"]).json()
        assert manifest["effective"]["long_prompt_chunked"] is True


def test_short_prompts_run_as_before(client: httpx.Client, run_worker: Any) -> None:
    (short,) = run(client, run_worker, [{**BASE, "prompt": "a red circle on a blue background"}])
    assert httpx.get(short["manifest_url"]).json()["effective"]["long_prompt_chunked"] is False


def test_a_long_negative_prompt_counts_too(client: httpx.Client, run_worker: Any) -> None:
    plain, negative = run(
        client,
        run_worker,
        [
            {**BASE, "prompt": "a red circle", "negative_prompt": f"{HEAD}, blue"},
            {**BASE, "prompt": "a red circle", "negative_prompt": f"{HEAD}, yellow and green"},
        ],
    )
    assert np.abs(pixels(plain) - pixels(negative)).max() > 0
