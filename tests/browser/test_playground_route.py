"""The playground's route: the page at ``/``, its assets at ``/static/{name}``, nothing else reachable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.routes import playground
from sdserve.settings import Settings


def with_playground(app: FastAPI) -> FastAPI:
    """The gateway with the playground router, unless app/main.py already includes it."""
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(playground.router)
    return app


@pytest.fixture
def page_client(settings: Settings) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(with_playground(create_app(settings))) as client:
        yield client


def test_serves_the_page_and_its_assets(page_client: TestClient) -> None:
    page = page_client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="static/playground.js"' in page.text and 'href="static/playground.css"' in page.text
    script = page_client.get("/static/playground.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    style = page_client.get("/static/playground.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert page_client.get("/static/index.html").text == page.text


def test_uses_only_the_public_api_and_no_outside_resources(page_client: TestClient) -> None:
    text = "".join(page_client.get(p).text for p in ("/", "/static/playground.js", "/static/playground.css"))
    assert "http://" not in text and "https://" not in text  # no CDN, nothing from outside
    for path in ("v1/models", "v1/schedulers", "v1/styles", "v1/loras", "v1/uploads", "/events", "/cancel"):
        assert path in text, path


@pytest.mark.parametrize(
    "path",
    [
        "/static/../main.py",
        "/static/..%2Fmain.py",
        "/static/%2e%2e%2fmain.py",
        "/static/..%5Cmain.py",
        "/static/.%2e",
        "/static/__init__.py",
        "/static/missing.js",
        "/static/.hidden.css",
        "/static/playground.js%00.css",
        "/static/%2Fetc%2Fpasswd",
        "/static//etc/passwd",
    ],
)
def test_nothing_outside_the_static_folder(page_client: TestClient, path: str) -> None:
    response = page_client.get(path)
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_page_is_not_in_the_openapi_document(page_client: TestClient) -> None:
    paths = page_client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
