"""The OpenAPI document is valid, complete, and generates a Python SDK that works on first try.

The SDK test runs openapi-python-client on the live gateway's ``/openapi.json`` into a temporary folder,
installs the generated package there (``pip install --no-deps --target``), imports it, and drives a real
txt2img job through it: ``createTxt2ImgJob``, a real worker, ``getJob`` until ``succeeded``, then the
image download. The generated client is never committed.
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image

from sdserve.settings import Settings

pytestmark = pytest.mark.integration

PACKAGE = "sdserve_client"

# openapi-python-client knows JSON, text/* and application/octet-stream responses only; result images
# (image/png, image/jpeg, image/webp) are binary downloads, which is what this mapping tells it.
# No post hooks: the generated code is not formatted (that would need ruff on the PATH and time).
GENERATOR_CONFIG = """\
content_type_overrides:
  image/png: application/octet-stream
  image/jpeg: application/octet-stream
  image/webp: application/octet-stream
post_hooks: []
"""

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


def document(settings: Settings) -> dict[str, Any]:
    from app.main import create_app

    return create_app(settings).openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


# --- validity ---------------------------------------------------------------------------------------
def test_document_is_valid_openapi(settings: Settings) -> None:
    doc = document(settings)
    validate(doc)  # raises with the failing part of the document
    assert doc["openapi"].startswith("3.1")


def test_served_document_is_valid_and_the_same(client: httpx.Client, settings: Settings) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    validate(served)
    assert served == document(settings)


# --- completeness (issue 9: every error response with its problem schema, webhooks) ----------------
def test_every_declared_error_response_offers_the_problem_schema(settings: Settings) -> None:
    doc = document(settings)
    for path, method, op in operations(doc):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and "HTTPValidationError" not in json.dumps(response):
                media = response.get("content", {}).get(PROBLEM_JSON)
                assert media is not None, (method, path, code)
                assert media["schema"] == {"$ref": PROBLEM_REF}, (method, path, code)


def test_no_operation_declares_fastapis_default_validation_error(settings: Settings) -> None:
    doc = document(settings)
    offenders = [
        f"{method.upper()} {path}"
        for path, method, op in operations(doc)
        if "HTTPValidationError" in json.dumps(op["responses"])
    ]
    assert offenders == []
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_error_responses_are_only_problem_json(settings: Settings) -> None:
    doc = document(settings)
    for path, method, op in operations(doc):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):
                assert set(response.get("content", {})) == {PROBLEM_JSON}, (method, path, code)


def test_webhook_payload_schema_is_under_webhooks(settings: Settings) -> None:
    doc = document(settings)
    webhooks = doc.get("webhooks") or {}
    assert webhooks
    for name, item in webhooks.items():
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body, name


# --- the generated SDK --------------------------------------------------------------------------------
def generate_client(openapi_url: str, folder: Path) -> ModuleType:
    """Generate the SDK from ``openapi_url``, install it under ``folder`` and import it."""
    config = folder / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    source = folder / "source"
    generated = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--url", openapi_url,
         "--output-path", str(source), "--meta", "setup", "--config", str(config), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    site = folder / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / PACKAGE / "py.typed").exists()
    sys.path.insert(0, str(site))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(site))


@pytest.fixture
def sdk(gateway: str, tmp_path: Path) -> Iterator[ModuleType]:
    module = generate_client(f"{gateway}/openapi.json", tmp_path)
    try:
        yield module
    finally:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_generated_sdk_drives_a_txt2img_job_to_completion(sdk: ModuleType, gateway: str, run_worker: Any) -> None:
    from sdserve_client.api.catalog import list_models
    from sdserve_client.api.files import get_file
    from sdserve_client.api.images import create_txt_2_img_job
    from sdserve_client.api.jobs import get_job
    from sdserve_client.models import Job, JobStatus, Problem, Txt2ImgRequest

    assert sdk.__file__ is not None and "site" in Path(sdk.__file__).parts  # the installed copy
    with sdk.Client(base_url=gateway, raise_on_unexpected_status=True, timeout=httpx.Timeout(30)) as api:
        models = list_models.sync(client=api)
        assert models is not None and "tiny" in [m.name for m in models.data]

        refused = create_txt_2_img_job.sync_detailed(client=api, body=Txt2ImgRequest(prompt="x", width=250))
        assert refused.status_code == 422
        assert isinstance(refused.parsed, Problem)
        assert refused.parsed.type_ == "/problems/validation-error"
        assert "body.width" in [e.field for e in refused.parsed.errors]

        body = Txt2ImgRequest(prompt="a lighthouse at dusk", width=64, height=72, steps=2, seed=1234)
        created = create_txt_2_img_job.sync_detailed(client=api, body=body)
        assert created.status_code == 202, created.content
        job = created.parsed
        assert isinstance(job, Job) and job.status is JobStatus.QUEUED
        assert created.headers["location"].endswith(f"/v1/jobs/{job.id}")
        assert job.request.seed == 1234 and job.request.task == "txt2img"

        run_worker()

        deadline = time.monotonic() + 60
        while True:
            current = get_job.sync(job.id, client=api)
            assert isinstance(current, Job)
            if current.status.value in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert current.status is JobStatus.SUCCEEDED, current.error
        assert len(current.images) == 1
        image = current.images[0]
        assert (image.width, image.height, image.seed) == (64, 72, 1234)
        assert image.content_type == "image/png"

        download = api.get_httpx_client().get(image.url)
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(download.content))
        assert picture.format == "PNG" and picture.size == (64, 72)

        # The same file through the SDK's own getFile operation (the key is a path with slashes).
        url = urlsplit(image.url)
        query = parse_qs(url.query)
        key = url.path.removeprefix("/v1/files/")
        through_sdk = get_file.sync_detailed(
            key, client=api, expires=int(query["expires"][0]), signature=query["signature"][0]
        )
        assert through_sdk.status_code == 200 and through_sdk.content == download.content


def test_generated_sdk_reads_every_task_from_the_job_request_union(sdk: ModuleType) -> None:
    """``Job.request`` is a union discriminated on ``task``: the SDK picks the right model for each."""
    from sdserve_client.models import Img2ImgRequest, InpaintRequest, Job, OutpaintRequest, Txt2ImgRequest

    from sdserve.jobs import JOB_EXAMPLE

    requests: dict[str, tuple[type[Any], dict[str, Any]]] = {
        "txt2img": (Txt2ImgRequest, {}),
        "img2img": (Img2ImgRequest, {"image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0", "strength": 0.5}),
        "inpaint": (
            InpaintRequest,
            {"image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0", "mask": "upl_9a8b7c6d5e4f30211203f4e5d6c7b8a9"},
        ),
        "outpaint": (OutpaintRequest, {"image": "upl_0f1e2d3c4b5a69788796a5b4c3d2e1f0", "left": 64}),
    }
    base = json.loads(json.dumps(JOB_EXAMPLE))
    for task, (model, extra) in requests.items():
        data = {**base, "task": task, "request": {**base["request"], "task": task, **extra}}
        job = Job.from_dict(data)
        assert type(job.request) is model, task
        assert job.to_dict()["request"]["task"] == task


def test_generated_sdk_uploads_an_image(sdk: ModuleType, gateway: str) -> None:
    from sdserve_client.api.uploads import create_upload
    from sdserve_client.models import BodyCreateUpload, Upload
    from sdserve_client.types import File

    png = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 30, 30)).save(png, format="PNG")
    with sdk.Client(base_url=gateway, timeout=httpx.Timeout(30)) as api:
        answer = create_upload.sync_detailed(
            client=api,
            body=BodyCreateUpload(file=File(payload=io.BytesIO(png.getvalue()), file_name="red.png")),
        )
    assert answer.status_code == 201, answer.content
    assert isinstance(answer.parsed, Upload)
    assert (answer.parsed.width, answer.parsed.height) == (40, 24)
