"""The OpenAPI document tells SDK users the truth: ids, summaries, examples, problem responses."""

from __future__ import annotations

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
