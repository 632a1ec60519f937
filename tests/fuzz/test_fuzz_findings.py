"""What the schemathesis run found, one request each, kept as regression tests now that each is fixed.

Each test states the behaviour the API should have; the comment above it says what it used to do. Some
of these took the fuzzer 120+ random examples per operation to find, more than its default run makes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest


def documented(client: httpx.Client, path: str, method: str) -> dict[str, Any]:
    """The responses the live OpenAPI document declares for one operation."""
    responses: dict[str, Any] = client.get("/openapi.json").json()["paths"][path][method]["responses"]
    return responses


# F1 (fixed): a body that cannot be parsed answers 400, which no operation documents
def test_an_unparsable_body_gets_a_documented_status(client: httpx.Client) -> None:
    not_utf8 = client.post("/v1/txt2img", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    broken = client.post("/v1/uploads", content=b"--x\r\nnope--x--\r\n", headers=multipart)
    assert not_utf8.headers["content-type"] == broken.headers["content-type"] == "application/problem+json"
    assert str(not_utf8.status_code) in documented(client, "/v1/txt2img", "post")
    assert str(broken.status_code) in documented(client, "/v1/uploads", "post")


# F2 (fixed): created_after takes a bare number (Unix seconds); the schema says ISO 8601
def test_created_after_takes_only_a_date_time(client: httpx.Client) -> None:
    assert client.get("/v1/jobs", params={"created_after": "2026-11-25T19:00:00Z"}).status_code == 200
    assert client.get("/v1/jobs", params={"created_after": "0.5"}).status_code == 422


# F3 (fixed): a 405's Allow lists the methods of the first matching route only
def test_a_405_allows_every_method_of_the_path(client: httpx.Client) -> None:
    response = client.request("OPTIONS", "/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "DELETE"}


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of a Server-Sent Events body (comments and empty blocks left out)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            if name and sep:
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


# F4 (fixed): the event stream's schema is {'type': 'string'}, not that of an event
def test_the_event_stream_matches_its_documented_schema(client: httpx.Client) -> None:
    job_id = client.post("/v1/txt2img", json={"prompt": "x"}).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    response = client.get(f"/v1/jobs/{job_id}/events")
    media = documented(client, "/v1/jobs/{job_id}/events", "get")["200"]["content"]["text/event-stream"]
    events = sse_events(response.text)
    assert [e["event"] for e in events] == ["queued", "canceled"]
    for event in events:  # before OpenAPI 3.2 (itemSchema), `schema` of an event stream describes one event
        jsonschema.validate(event, media["schema"])


# F5 (fixed): manifest.json is served as application/json, undocumented for getFile
def test_a_manifest_is_served_with_a_documented_content_type(client: httpx.Client, run_worker: Any) -> None:
    job_id = client.post("/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}).json()["id"]
    run_worker()
    url = urlsplit(client.get(f"/v1/jobs/{job_id}").json()["manifest_url"])
    response = client.get(f"{url.path}?{url.query}")
    assert response.status_code == 200
    assert response.headers["content-type"] in documented(client, "/v1/files/{key}", "get")["200"]["content"]


# F6 (fixed): a webhook host that cannot be IDNA-encoded raises UnicodeError: 500
@pytest.mark.parametrize("url", ["https://a..b/", "https://" + "a" * 64 + ".example/", "https://\x92r.example/"])
def test_a_webhook_url_with_an_invalid_host_is_refused(client: httpx.Client, url: str) -> None:
    response = client.post("/v1/txt2img", json={"prompt": "x", "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "/problems/unsafe-webhook-url"


# F7 (fixed): a non-ASCII signature makes hmac.compare_digest raise TypeError: 500
def test_a_file_url_with_a_non_ascii_signature_is_forbidden(client: httpx.Client) -> None:
    response = client.get("/v1/files/outputs/x/0.png", params={"expires": "9999999999", "signature": "é"})
    assert response.status_code == 403, response.text
