"""Uploads belong to a key, like jobs: another key cannot see one, nor use it (or another key's job inputs)
in its own jobs; and deleting a job makes its inputs unusable. A submit naming an unusable id is a 422 at the
gateway, never a job that fails at the worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.access.api_keys import hash_key, new_key
from sdserve.settings import Settings
from tests.conftest import LiveServer
from tests.images import data_uri, encode, pattern

ALICE, BOB = new_key(), new_key()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway_with_keys(settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    configured = settings.model_copy(update={"api_keys": [f"alice:{hash_key(ALICE)}", f"bob:{hash_key(BOB)}"]})
    with LiveServer(create_app(configured)) as server:
        yield server.url


def upload(url: str, key: str) -> dict[str, Any]:
    files = {"file": ("in.png", encode(pattern(64, 64)), "image/png")}
    answer = httpx.post(f"{url}/v1/uploads", files=files, data={"kind": "image"}, headers=auth(key))
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def img2img(url: str, key: str, image: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/img2img", json={"prompt": "x", "image": image, "steps": 2}, headers=auth(key))


def test_another_key_can_neither_see_nor_use_an_upload(gateway_with_keys: str) -> None:
    url = gateway_with_keys
    mine = upload(url, ALICE)
    assert httpx.get(f"{url}/v1/uploads/{mine['id']}", headers=auth(ALICE)).status_code == 200
    seen = httpx.get(f"{url}/v1/uploads/{mine['id']}", headers=auth(BOB))
    assert seen.status_code == 404 and seen.json()["type"] == "/problems/not-found"
    used = img2img(url, BOB, mine["id"])
    assert used.status_code == 422 and used.json()["type"] == "/problems/unusable-input"
    assert used.json()["errors"][0]["field"] == "body.image"
    assert img2img(url, ALICE, mine["id"]).status_code == 202


def test_the_inputs_of_another_keys_job_are_not_usable(gateway_with_keys: str) -> None:
    url = gateway_with_keys
    job = img2img(url, ALICE, data_uri(encode(pattern(64, 64, seed=3)))).json()
    stored = job["request"]["image"]  # the inline image became an upload id of alice's
    assert stored.startswith("upl_")
    stolen = img2img(url, BOB, stored)
    assert stolen.status_code == 422 and stolen.json()["type"] == "/problems/unusable-input"


def test_deleting_a_job_makes_its_inputs_unusable(gateway_with_keys: str) -> None:
    url = gateway_with_keys
    mine = upload(url, ALICE)
    job = img2img(url, ALICE, mine["id"]).json()
    assert httpx.delete(f"{url}/v1/jobs/{job['id']}", headers=auth(ALICE)).status_code == 204
    again = img2img(url, ALICE, mine["id"])
    assert again.status_code == 422 and again.json()["type"] == "/problems/unusable-input"
    assert httpx.get(f"{url}/v1/uploads/{mine['id']}", headers=auth(ALICE)).status_code == 404
