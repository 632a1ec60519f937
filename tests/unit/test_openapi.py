"""The OpenAPI document tells SDK users the truth: ids, summaries, examples, problem responses."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from sdserve.settings import Settings


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("d")), _env_file=None)  # type: ignore[call-arg]
    return create_app(settings).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_every_operation_has_an_id_summary_and_tag(document: dict[str, Any]) -> None:
    ids = []
    for path, method, op in operations(document):
        assert op.get("operationId"), (method, path)
        assert op.get("summary"), (method, path)
        assert op.get("tags"), (method, path)
        ids.append(op["operationId"])
    assert len(ids) == len(set(ids))


def test_create_has_examples_and_documents_its_problems(document: dict[str, Any]) -> None:
    op = document["paths"]["/v1/txt2img"]["post"]
    schema = document["components"]["schemas"]["Txt2ImgRequest"]
    assert schema["examples"][0]["prompt"] == "a lighthouse at dusk"
    assert {"202", "422", "503"} <= set(op["responses"])
    assert "application/problem+json" in op["responses"]["422"]["content"]
    assert "Location" in op["responses"]["202"]["headers"]
    assert "Problem" in document["components"]["schemas"]


def _has_example(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return bool(schema.get("examples") or schema.get("example"))


def test_every_operation_has_an_example(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        found = any(p.get("examples") or p.get("schema", {}).get("examples") for p in op.get("parameters", []))
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        found = found or (body is not None and _has_example(document, body))
        for response in op["responses"].values():
            for media in response.get("content", {}).values():
                found = found or _has_example(document, media.get("schema", {}))
        assert found, (method, path)


SIGNED_FILES = "/v1/files/"
"""Signed downloads: no API key (the signature is the credential); their 403 is a bad or expired signature."""


def _keyed_document(tmp_path: Path) -> dict[str, Any]:
    digest = hashlib.sha256(b"sk_test").hexdigest()
    settings = Settings(data_dir=tmp_path, api_keys=[f"acme:{digest}:jobs"], _env_file=None)  # type: ignore[call-arg]
    return create_app(settings).openapi()


def test_open_mode_documents_no_security(document: dict[str, Any]) -> None:
    """No keys configured (a loopback gateway): nothing asks for a key, no operation answers 401 or 403."""
    assert "securitySchemes" not in document.get("components", {})
    assert "security" not in document
    for path, method, op in operations(document):
        assert "security" not in op, (method, path)
        assert "401" not in op["responses"], (method, path)
        if not path.startswith(SIGNED_FILES):
            assert "403" not in op["responses"], (method, path)


def test_keyed_mode_documents_the_api_key_on_every_v1_operation(tmp_path: Path) -> None:
    doc = _keyed_document(tmp_path)
    assert doc["components"]["securitySchemes"] == {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`sk_…`) as `Authorization: Bearer <key>`.",
        }
    }
    secured = 0
    for path, method, op in operations(doc):
        if path.startswith("/v1/") and not path.startswith(SIGNED_FILES):
            assert op.get("security") == [{"apiKey": []}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
            assert "application/problem+json" in op["responses"]["401"]["content"], (method, path)
            secured += 1
        else:
            assert "security" not in op, (method, path)
            assert "401" not in op["responses"], (method, path)
    assert secured >= 10  # the create, job, upload, catalog and admin operations
