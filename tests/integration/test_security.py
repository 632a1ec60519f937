"""No one gets in without a key: API keys, scopes, job visibility, rate limits, caps, CORS, headers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from app.main import create_app
from sdserve.access.api_keys import hash_key, new_key
from sdserve.settings import Settings
from tests.conftest import LiveServer

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
ALICE, BOB, ADMIN = new_key(), new_key(), new_key()


@pytest.fixture
def secured(settings: Settings, redis_client: redis.Redis, tmp_path: Any) -> Iterator[str]:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[keys.alice]\nsha256 = "{hash_key(ALICE)}"\nscopes = ["jobs"]\nrate_per_minute = 60\nburst = 5\n'
        f"max_active_jobs = 3\n"
        f'[keys.ops]\nsha256 = "{hash_key(ADMIN)}"\nscopes = ["jobs", "admin"]\n'
    )
    configured = settings.model_copy(
        update={"api_keys_file": keys, "api_keys": [f"bob:{hash_key(BOB)}"], "cors_origins": ["https://app.example"]}
    )
    with LiveServer(create_app(configured)) as server:
        yield server.url


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_requests_without_a_valid_key_are_401(secured: str) -> None:
    for headers in ({}, auth("sk_wrong"), {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        answer = httpx.post(f"{secured}/v1/txt2img", json=BODY, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert ALICE not in answer.text
    for path in ("/v1/jobs", "/v1/models", "/v1/loras"):
        assert httpx.get(f"{secured}{path}").status_code == 401
    # Probes, problem docs, the playground and signed files stay public.
    for path in ("/healthz", "/readyz", "/problems/not-found", "/", "/openapi.json"):
        assert httpx.get(f"{secured}{path}").status_code == 200, path


def test_jobs_are_visible_only_to_the_key_that_created_them(secured: str) -> None:
    job = httpx.post(f"{secured}/v1/txt2img", json=BODY, headers=auth(ALICE)).json()
    assert httpx.get(f"{secured}/v1/jobs/{job['id']}", headers=auth(ALICE)).status_code == 200
    for call in (
        lambda: httpx.get(f"{secured}/v1/jobs/{job['id']}", headers=auth(BOB)),
        lambda: httpx.post(f"{secured}/v1/jobs/{job['id']}/cancel", headers=auth(BOB)),
        lambda: httpx.delete(f"{secured}/v1/jobs/{job['id']}", headers=auth(BOB)),
        lambda: httpx.get(f"{secured}/v1/jobs/{job['id']}/events", headers=auth(BOB)),
    ):
        assert call().status_code == 404
    assert httpx.get(f"{secured}/v1/jobs", headers=auth(BOB)).json()["data"] == []
    assert [j["id"] for j in httpx.get(f"{secured}/v1/jobs", headers=auth(ALICE)).json()["data"]] == [job["id"]]
    # Idempotency keys are per caller too: bob's same key makes bob's own job.
    key = {"Idempotency-Key": "same-key"}
    a = httpx.post(f"{secured}/v1/txt2img", json=BODY, headers={**auth(ALICE), **key}).json()["id"]
    b = httpx.post(f"{secured}/v1/txt2img", json=BODY, headers={**auth(BOB), **key}).json()["id"]
    assert a != b


def test_admin_endpoints_need_the_admin_scope(secured: str, redis_client: redis.Redis, settings: Settings) -> None:
    assert httpx.post(f"{secured}/v1/admin/queues/tiny/pause", headers=auth(ALICE)).status_code == 403
    paused = httpx.post(f"{secured}/v1/admin/queues/tiny/pause", headers=auth(ADMIN))
    assert paused.status_code == 200
    assert next(q for q in paused.json()["data"] if q["model"] == "tiny")["paused"]
    resumed = httpx.post(f"{secured}/v1/admin/queues/tiny/resume", headers=auth(ADMIN)).json()
    assert not next(q for q in resumed["data"] if q["model"] == "tiny")["paused"]
    assert httpx.post(f"{secured}/v1/admin/queues/nope/pause", headers=auth(ADMIN)).status_code == 422
    reload = httpx.post(f"{secured}/v1/admin/registry/reload", headers=auth(ADMIN))
    assert reload.status_code == 200 and reload.json()["version"] >= 1
    assert httpx.post(f"{secured}/v1/admin/drain", headers=auth(ADMIN), json={}).json() == {"workers": []}


def test_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(secured: str) -> None:
    answers = [
        httpx.post(f"{secured}/v1/uploads", headers=auth(BOB), files={"file": ("a.png", b"x")}) for _ in range(2)
    ]
    assert "ratelimit-limit" in answers[0].headers
    statuses, last = [], None
    for _ in range(8):  # alice: bursts of 5
        last = httpx.post(f"{secured}/v1/txt2img", json={**BODY, "prompt": "p"}, headers=auth(ALICE))
        statuses.append(last.status_code)
    assert last is not None
    assert statuses.count(429) >= 3
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
    assert last.headers["ratelimit-remaining"] == "0" and last.headers["ratelimit-limit"] == "5"
    assert last.json()["type"] == "/problems/rate-limited"


def test_active_jobs_cap(secured: str, redis_client: redis.Redis) -> None:
    statuses = [httpx.post(f"{secured}/v1/txt2img", json=BODY, headers=auth(ALICE)).status_code for _ in range(4)]
    assert statuses[:3] == [202, 202, 202] and statuses[3] == 429  # cap of 3 queued or running
    first = httpx.get(f"{secured}/v1/jobs", headers=auth(ALICE)).json()["data"][-1]["id"]
    httpx.post(f"{secured}/v1/jobs/{first}/cancel", headers=auth(ALICE))
    time.sleep(1.1)  # the bucket refills one token a second
    assert httpx.post(f"{secured}/v1/txt2img", json=BODY, headers=auth(ALICE)).status_code == 202


def test_queue_depth_limit_answers_503(settings: Settings, redis_client: redis.Redis) -> None:
    shallow = settings.model_copy(update={"max_queue_depth": 2})
    with LiveServer(create_app(shallow)) as server:
        codes = [httpx.post(f"{server.url}/v1/txt2img", json=BODY).status_code for _ in range(3)]
        assert codes == [202, 202, 503]
        full = httpx.post(f"{server.url}/v1/txt2img", json=BODY)
        assert full.headers["retry-after"] and full.json()["type"] == "/problems/overloaded"  # a full queue


def test_cors_only_for_listed_origins(secured: str, client: httpx.Client) -> None:
    allowed = httpx.options(
        f"{secured}/v1/txt2img",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )  # fmt: skip
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.get(f"{secured}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    default = client.get("/healthz", headers={"Origin": "https://app.example"})  # no allow-list: no CORS at all
    assert "access-control-allow-origin" not in default.headers


def test_open_mode_only_on_loopback(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="refusing to start"):
        create_app(settings.model_copy(update={"host": "0.0.0.0"}))
    create_app(settings.model_copy(update={"host": "0.0.0.0", "api_keys": [f"bob:{hash_key(BOB)}"]}))


def test_responses_carry_a_request_id_and_no_banner(secured: str) -> None:
    answer = httpx.get(f"{secured}/v1/jobs", headers={**auth(BOB), "X-Request-ID": "trace-1"})
    assert answer.headers["x-request-id"] == "trace-1"
    assert "server" not in answer.headers and "x-powered-by" not in answer.headers


def test_the_openapi_document_declares_the_bearer_scheme(secured: str) -> None:
    doc = httpx.get(f"{secured}/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/txt2img"]["post"]["security"] == [{"apiKey": []}]
    assert "401" in doc["paths"]["/v1/txt2img"]["post"]["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
