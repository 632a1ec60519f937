"""The gateway's HTTP contract: problem+json errors, signed files, readiness, headers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.images.requests import Txt2ImgRequest
from sdserve.keys import Keys
from sdserve.secrets import url_signing_key
from sdserve.settings import Settings
from sdserve.storage.local import LocalStore
from tests.conftest import LiveServer, free_port
from worker.images.recipes import RECIPES
from worker.images.recipes.base import Inputs, RecipeContext
from worker.images.recipes.txt2img import Txt2Img

PROBLEM = "application/problem+json"
SMALL = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["instance"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"width": 250}, "body.width"),
        ({"height": 4096}, "body.height"),
        ({"width": 32}, "body.width"),
        ({"steps": 0}, "body.steps"),
        ({"steps": 151}, "body.steps"),
        ({"num_images": 9}, "body.num_images"),
        ({"num_images": 0}, "body.num_images"),
        ({"guidance_scale": 31}, "body.guidance_scale"),
        ({"scheduler": "k_magic"}, "body.scheduler"),
        ({"seed": -1}, "body.seed"),
        ({"seed": 2**32}, "body.seed"),
        ({"prompt": ""}, "body.prompt"),
        ({"prompt": "x" * 2001}, "body.prompt"),
        ({"negative_prompt": "x" * 2001}, "body.negative_prompt"),
        ({"unknown_field": 1}, "body.unknown_field"),
        ({"output": {"format": "gif"}}, "body.output.format"),
        ({"loras": [{"name": "../../etc/passwd"}]}, "body.loras.0.name"),
        ({"model": "Bad/Name"}, "body.model"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "body.metadata"),
        ({"width": 1024, "height": 3080}, "body.height"),
    ],
)
def test_invalid_fields_are_named_in_a_422(client: httpx.Client, patch: dict[str, Any], field: str) -> None:
    body = assert_problem(client.post("/v1/txt2img", json={**SMALL, **patch}), 422, "validation-error")
    assert field in [e["field"] for e in body["errors"]], body


def test_pixel_budget_is_enforced(client: httpx.Client) -> None:
    body = assert_problem(
        client.post("/v1/txt2img", json={**SMALL, "width": 3072, "height": 1536}), 422, "validation-error"
    )
    assert "pixels" in body["detail"]
    assert client.post("/v1/txt2img", json={**SMALL, "width": 3072, "height": 1360}).status_code == 202
    assert client.post("/v1/txt2img", json={**SMALL, "width": 2048, "height": 2048}).status_code == 202


def test_unknown_names_are_422_at_the_gateway(client: httpx.Client) -> None:
    assert_problem(client.post("/v1/txt2img", json={**SMALL, "model": "sd-nope"}), 422, "unknown-name")
    assert_problem(client.post("/v1/txt2img", json={**SMALL, "style": "nope"}), 422, "unknown-name")
    body = assert_problem(client.post("/v1/txt2img", json={**SMALL, "loras": [{"name": "nope"}]}), 422, "unknown-name")
    assert body["errors"][0]["field"] == "body.loras.0.name"


def test_malformed_json_and_wrong_types(client: httpx.Client) -> None:
    assert_problem(
        client.post("/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation-error",
    )
    assert_problem(client.post("/v1/txt2img", json=[1, 2]), 422, "validation-error")
    assert_problem(client.post("/v1/txt2img", json={"prompt": 5}), 422, "validation-error")


def test_curl_style_form_content_type_is_read_as_json(client: httpx.Client) -> None:
    response = client.post(
        "/v1/txt2img",
        content=b'{"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202, response.text


def test_unknown_job_and_route_and_method(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95"), 404, "not-found")
    assert_problem(client.get("/v1/jobs/not-a-job-id"), 404, "not-found")
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(client.delete("/v1/txt2img"), 405, "method-not-allowed")


def test_problem_types_resolve_to_an_explanation(client: httpx.Client) -> None:
    problem = client.get("/v1/jobs/not-a-job-id").json()
    explained = client.get(problem["type"])
    assert explained.status_code == 200
    assert explained.json()["status"] == 404


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert made and made != "bad id with spaces"
    assert "server" not in client.get("/healthz").headers


def test_signed_urls_refuse_tampering_expiry_and_traversal(
    client: httpx.Client, gateway: str, settings: Settings
) -> None:
    store = LocalStore(settings.objects_dir, url_signing_key(settings))
    store.put("outputs/x/0.png", b"\x89PNG fake", "image/png")
    good = store.signed_url("outputs/x/0.png", expires_in=60, base_url=gateway)
    assert httpx.get(good.url).content == b"\x89PNG fake"
    assert_problem(httpx.get(good.url.replace("signature=", "signature=0")), 403, "forbidden")
    expired = store.signed_url("outputs/x/0.png", expires_in=-1, base_url=gateway)
    assert_problem(httpx.get(expired.url), 403, "forbidden")
    other = store.signed_url("outputs/x/1.png", expires_in=60, base_url=gateway)
    assert_problem(httpx.get(other.url), 404, "not-found")
    sig = good.url.split("?")[1]
    assert httpx.get(f"{gateway}/v1/files/outputs/../../etc/passwd?{sig}").status_code in (403, 404)
    assert httpx.get(f"{gateway}/v1/files/outputs/x/0.png").status_code == 422


def test_head_on_a_result_url_answers_its_headers_without_a_body(client: httpx.Client, run_worker: Any) -> None:
    job_id = client.post("/v1/txt2img", json=SMALL).json()["id"]
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    for url, content_type in ((job["images"][0]["url"], "image/png"), (job["manifest_url"], "application/json")):
        got = httpx.get(url)
        head = httpx.head(url)
        assert got.status_code == head.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"] == content_type
        assert int(head.headers["content-length"]) == len(got.content) > 0
        assert head.headers["cache-control"] == got.headers["cache-control"]
        assert head.headers["etag"] == got.headers["etag"]
    tampered = httpx.head(job["images"][0]["url"].replace("signature=", "signature=0"))
    assert tampered.status_code == 403 and tampered.content == b""  # the GET's answer, without its body
    assert tampered.headers["content-type"].startswith(PROBLEM)


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "store": "ok"}


def test_redis_down_answers_503_fast(settings: Settings) -> None:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with LiveServer(create_app(dead)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        for method, path, body in (
            ("POST", "/v1/txt2img", SMALL),
            ("GET", "/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95", None),
            ("GET", "/readyz", None),
        ):
            started = time.monotonic()
            response = c.request(method, path, json=body)
            assert time.monotonic() - started < 2.0
            problem = assert_problem(response, 503, "unavailable")
            assert response.headers["retry-after"]
            assert problem["detail"]
        assert c.get("/healthz").status_code == 200


def test_models_report_live_workers(
    client: httpx.Client,
    run_worker: Any,
    settings: Settings,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = client.get("/v1/models").json()["data"]
    tiny = next(m for m in before if m["name"] == "tiny")
    assert tiny["default"] and tiny["workers"] == [] and not tiny["warm"]
    client.post("/v1/txt2img", json=SMALL)
    assert next(m for m in client.get("/v1/models").json()["data"] if m["name"] == "tiny")["queued"] == 1

    # While a worker runs a job, it advertises the models it serves; it retires when it stops.
    seen: list[dict[str, Any]] = []

    class Observing(Txt2Img):
        def inputs(self, ctx: RecipeContext, request: Txt2ImgRequest) -> Inputs:
            seen.extend(m for m in client.get("/v1/models").json()["data"] if m["name"] == "tiny")
            return super().inputs(ctx, request)

    monkeypatch.setitem(RECIPES, "txt2img", Observing())
    worker = run_worker(name="w-visible")
    assert seen and seen[0]["workers"] == ["w-visible"] and seen[0]["warm"]
    keys = Keys(settings.key_prefix)
    assert redis_client.get(keys.worker(worker.name)) is None  # its presence is gone
    assert redis_client.zscore(keys.workers(), worker.name) is None
    tiny = next(m for m in client.get("/v1/models").json()["data"] if m["name"] == "tiny")
    assert tiny["workers"] == [] and tiny["queued"] == 0


def test_a_failing_job_records_a_problem_not_a_traceback(
    client: httpx.Client, run_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Boom(Txt2Img):
        def inputs(self, ctx: RecipeContext, request: Txt2ImgRequest) -> Inputs:
            raise RuntimeError("secret internal path /srv/model.bin")

    monkeypatch.setitem(RECIPES, "txt2img", Boom())
    job_id = client.post("/v1/txt2img", json=SMALL).json()["id"]
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == "/problems/internal"
    assert "secret" not in str(job) and "Traceback" not in str(job)
    assert job["images"] == []
