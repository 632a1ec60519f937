"""The OpenAPI document is valid, complete, and generates a Python SDK that works on first try.

The SDK tests run openapi-python-client on a live gateway's ``/openapi.json`` (once per module) into a temporary
folder, install the generated package there (``pip install --no-deps --target``) and import it. One test drives a
real txt2img job through it (``createTxt2ImgJob``, a real worker, ``getJob`` until ``succeeded``, the image
download); another calls every operation the SDK has, at least once, against a live gateway and a real worker,
and checks the typed answer (or the documented error type). The generated client is never committed.
"""

from __future__ import annotations

import importlib
import io
import json
import pkgutil
import subprocess
import sys
import time
import uuid
import zipfile
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
from tests.conftest import LiveServer
from tests.images import encode, pattern, rect_mask

PACKAGE = "sdserve_client"

# No content-type overrides: the document alone must give the generator what it needs (result files as raw
# bytes, the event stream as text). No post hooks: the generated code is not formatted (that would need ruff
# on the PATH and time).
GENERATOR_CONFIG = """\
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
def generate_client(openapi_url: str, folder: Path) -> None:
    """Generate the SDK from ``openapi_url`` and install it under ``folder``/site."""
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


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback webhook receivers are allow-listed (so a job here may have a webhook to redeliver)."""
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8:8080"]})


@pytest.fixture(scope="module")
def sdk_site(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDK generated from a live gateway's document and installed, once for this module's tests."""
    from app.main import create_app

    folder = tmp_path_factory.mktemp("sdk")
    settings = Settings(
        redis_url=redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}", data_dir=folder / "data",
        url_signing_secret="test-secret", _env_file=None,  # type: ignore[arg-type,call-arg]
    )  # fmt: skip
    with LiveServer(create_app(settings)) as server:
        generate_client(f"{server.url}/openapi.json", folder)
    return folder / "site"


@pytest.fixture
def sdk(sdk_site: Path) -> Iterator[ModuleType]:
    sys.path.insert(0, str(sdk_site))
    try:
        importlib.invalidate_caches()
        module = importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(sdk_site))
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
    from sdserve_client.types import File

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
        assert isinstance(through_sdk.parsed, File)  # raw bytes, not parsed as anything
        assert through_sdk.parsed.payload.read() == download.content


def test_generated_sdk_reads_every_task_from_the_job_request_union(sdk: ModuleType) -> None:
    """``Job.request`` is a union discriminated on ``task``: the SDK picks the right model for each."""
    from sdserve_client.models import Img2ImgRequest, InpaintRequest, Job, OutpaintRequest, Txt2ImgRequest

    from sdserve.images.view import JOB_EXAMPLE

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


def sdk_operations() -> set[str]:
    """Every operation module of the generated SDK (``<tag>.<operation>``)."""
    from sdserve_client import api

    found = set()
    for tag in pkgutil.iter_modules(api.__path__):
        package = importlib.import_module(f"{api.__name__}.{tag.name}")
        found |= {f"{tag.name}.{op.name}" for op in pkgutil.iter_modules(package.__path__)}
    return found


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


def test_every_operation_of_the_generated_sdk_works(sdk: ModuleType, gateway: str, run_worker: Any) -> None:
    """Each operation is called at least once through the SDK and answers its documented, typed result."""
    from sdserve_client import api
    from sdserve_client.models import (
        BodyCreateUpload,
        BodyCreateUploadKind,
        DatasetUpload,
        DeliveryList,
        Drained,
        DrainRequest,
        Health,
        Img2ImgRequest,
        InpaintRequest,
        Job,
        JobList,
        JobStatus,
        LoraList,
        ModelList,
        OutpaintRequest,
        Problem,
        ProblemType,
        QueueList,
        RegistryInfo,
        SchedulerList,
        StyleList,
        Training,
        TrainingRequest,
        Txt2ImgRequest,
        Upload,
        WebhookSpec,
    )
    from sdserve_client.types import File

    called: set[str] = set()

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        """``<tag>.<operation>``'s sync_detailed; the typed answer, with its status."""
        tag, operation = name.split(".")
        module = importlib.import_module(f"{api.__name__}.{tag}.{operation}")
        called.add(name)
        answer = module.sync_detailed(*args, client=client, **kwargs)
        return answer.status_code, answer.parsed

    def problem(answer: tuple[int, Any], status: int, slug: str) -> None:
        code, parsed = answer
        assert code == status and isinstance(parsed, Problem), answer
        assert parsed.type_ == f"/problems/{slug}" and parsed.status == status

    def upload(data: bytes, kind: Any) -> Upload:
        body = BodyCreateUpload(
            file=File(payload=io.BytesIO(data), file_name="in.png", mime_type="image/png"), kind=kind
        )
        code, parsed = call("uploads.create_upload", body=body)
        assert code == 201 and isinstance(parsed, Upload), parsed
        return parsed

    def created(name: str, body: Any) -> Job:
        code, parsed = call(name, body=body)
        assert code == 202 and isinstance(parsed, Job) and parsed.status is JobStatus.QUEUED, parsed
        return parsed

    with sdk.Client(base_url=gateway, raise_on_unexpected_status=True, timeout=httpx.Timeout(30)) as client:
        # Health and catalog.
        code, health = call("health.get_health")
        assert code == 200 and isinstance(health, Health) and health.status == "ok"
        code, ready = call("health.get_readiness")
        assert code == 200 and isinstance(ready, Health) and ready.checks.to_dict() == {"redis": "ok", "store": "ok"}
        code, models = call("catalog.list_models")
        assert code == 200 and isinstance(models, ModelList) and "tiny" in [m.name for m in models.data]
        code, schedulers = call("catalog.list_schedulers", model="tiny")
        tiny = next(m for m in models.data if m.name == "tiny")
        assert code == 200 and isinstance(schedulers, SchedulerList) and schedulers.data == tiny.schedulers
        problem(call("catalog.list_schedulers", model="sd-nope"), 422, "unknown-name")
        code, styles = call("catalog.list_styles")
        assert code == 200 and isinstance(styles, StyleList) and "anime" in [s.name for s in styles.data]
        code, loras = call("catalog.list_loras")
        assert code == 200 and isinstance(loras, LoraList) and "tiny-detail" in [lora.name for lora in loras.data]
        code, explained = call("problems.get_problem_type", "not-found")
        assert code == 200 and isinstance(explained, ProblemType) and explained.status == 404
        problem(call("problems.get_problem_type", "no-such-problem"), 404, "not-found")

        # Uploads, then one job of every task.
        image = upload(encode(pattern(64, 48)), BodyCreateUploadKind.IMAGE)
        mask = upload(encode(rect_mask(64, 48, (16, 8, 48, 40))), BodyCreateUploadKind.MASK)
        code, again = call("uploads.get_upload", image.id)
        assert code == 200 and isinstance(again, Upload) and (again.id, again.width, again.height) == (image.id, 64, 48)
        problem(call("uploads.get_upload", "upl_0123456789abcdef0123456789abcdef"), 404, "not-found")
        hook = WebhookSpec(url="http://127.0.0.1:8080/hook")
        jobs = [
            created(
                "images.create_txt_2_img_job", Txt2ImgRequest(prompt="a", width=64, height=64, steps=2, webhook=hook)
            ),
            created("images.create_img_2_img_job", Img2ImgRequest(prompt="b", image=image.id, steps=2, strength=0.5)),
            created("images.create_inpaint_job", InpaintRequest(prompt="c", image=image.id, mask=mask.id, steps=2)),
            created("images.create_outpaint_job", OutpaintRequest(prompt="d", image=image.id, left=16, steps=2)),
        ]
        assert [type(job.request).__name__ for job in jobs] == [
            "Txt2ImgRequest", "Img2ImgRequest", "InpaintRequest", "OutpaintRequest",
        ]  # fmt: skip

        # Admin: the queue, paused and resumed; the registry reloaded.
        code, queues = call("admin.list_queues")
        assert code == 200 and isinstance(queues, QueueList)
        assert {q.queue: q.waiting for q in queues.data}["tiny"] == 4  # a model has an image and a training queue
        code, paused = call("admin.pause_queue", "tiny")
        assert code == 200 and isinstance(paused, QueueList) and {q.model: q.paused for q in paused.data}["tiny"]
        code, resumed = call("admin.resume_queue", "tiny")
        assert code == 200 and isinstance(resumed, QueueList) and not {q.model: q.paused for q in resumed.data}["tiny"]
        problem(call("admin.pause_queue", "sd-nope"), 422, "unknown-name")
        code, registry = call("admin.reload_registry")
        assert code == 200 and isinstance(registry, RegistryInfo) and registry.models >= 2 and registry.version >= 1

        run_worker()

        # Jobs: each succeeded, listed, streamed, its files downloaded.
        done = []
        for job in jobs:
            code, current = call("jobs.get_job", job.id)
            assert code == 200 and isinstance(current, Job) and current.status is JobStatus.SUCCEEDED, current
            done.append(current)
        problem(call("jobs.get_job", "01a2141e-8035-722a-ae56-08d956773a95"), 404, "not-found")
        code, listed = call("jobs.list_jobs", status=JobStatus.SUCCEEDED, limit=10)
        assert code == 200 and isinstance(listed, JobList)
        assert {j.id for j in listed.data} == {j.id for j in jobs} and listed.next_cursor is None

        first = done[0]
        for url, expect in ((first.images[0].url, "png"), (first.manifest_url, "manifest")):
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            key = parts.path.removeprefix("/v1/files/")
            code, file = call("files.get_file", key, expires=int(query["expires"][0]), signature=query["signature"][0])
            assert code == 200 and isinstance(file, File), file
            data = file.payload.read()
            if expect == "png":
                assert Image.open(io.BytesIO(data)).size == (64, 64)
            else:
                assert json.loads(data)["job_id"] == first.id
        problem(call("files.get_file", key, expires=int(query["expires"][0]), signature="0" * 64), 403, "forbidden")

        code, stream = call("jobs.stream_job_events", first.id)
        assert code == 200 and isinstance(stream, str), stream  # the stream's text
        events = sse_events(stream)
        assert [e["event"] for e in events][:2] == ["queued", "started"] and events[-1]["event"] == "succeeded"
        assert json.loads(events[-1]["data"])["job"]["id"] == first.id
        code, resumed_stream = call("jobs.stream_job_events", first.id, last_event_id=events[-2]["id"])
        assert code == 200 and [e["event"] for e in sse_events(resumed_stream)] == ["succeeded"]

        # Webhook deliveries: listed, the terminal one queued again; a job without a webhook has none to redeliver.
        code, deliveries = call("jobs.list_webhook_deliveries", first.id)
        assert code == 200 and isinstance(deliveries, DeliveryList) and deliveries.data == []
        code, redelivered = call("jobs.redeliver_webhook", first.id)
        assert code == 202 and isinstance(redelivered, DeliveryList) and redelivered.pending > deliveries.pending
        problem(call("jobs.redeliver_webhook", done[1].id), 409, "conflict")

        # Cancel (a queued job, and an ended one: unchanged) and delete.
        queued = created("images.create_txt_2_img_job", Txt2ImgRequest(prompt="never run", width=64, height=64))
        code, canceled = call("jobs.cancel_job", queued.id)
        assert code == 200 and isinstance(canceled, Job) and canceled.status is JobStatus.CANCELED
        code, unchanged = call("jobs.cancel_job", first.id)
        assert code == 200 and isinstance(unchanged, Job) and unchanged.status is JobStatus.SUCCEEDED
        code, deleted = call("jobs.delete_job", done[1].id)
        assert code == 204 and deleted is None
        code, purged = call("jobs.get_job", done[1].id)
        assert code == 200 and isinstance(purged, Job) and purged.purged and purged.images == []

        # Trainings: a dataset upload, a training (queued: no worker here trains), followed, canceled, deleted.
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as packed:
            for i in range(2):
                image = io.BytesIO()
                Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(image, format="PNG")
                packed.writestr(f"img{i}.png", image.getvalue())
            packed.writestr("img0.txt", "a photo of zwx")
        body = BodyCreateUpload(
            file=File(payload=io.BytesIO(archive.getvalue()), file_name="set.zip", mime_type="application/zip"),
            kind=BodyCreateUploadKind.DATASET,
        )
        code, dataset = call("uploads.create_upload", body=body)
        assert code == 201 and isinstance(dataset, DatasetUpload) and (dataset.images, dataset.captioned) == (2, 1)
        request = TrainingRequest.from_dict(
            {"method": "lora", "base_model": "tiny", "name": "sdk-style", "dataset": dataset.id, "trigger_word": "zwx"}
        )
        code, training = call("trainings.create_training", body=request)
        assert code == 202 and isinstance(training, Training) and training.status is JobStatus.QUEUED, training
        code, current = call("trainings.get_training", training.id)
        assert code == 200 and isinstance(current, Training) and current.request.hyperparameters.rank == 8
        code, trainings = call("trainings.list_trainings")
        assert code == 200 and [t.id for t in trainings.data] == [training.id]
        code, stopped = call("trainings.cancel_training", training.id)
        assert code == 200 and isinstance(stopped, Training) and stopped.status is JobStatus.CANCELED
        code, stream = call("trainings.stream_training_events", training.id)
        assert code == 200 and [e["event"] for e in sse_events(stream)] == ["queued", "canceled"]
        code, deliveries = call("trainings.list_training_webhook_deliveries", training.id)
        assert code == 200 and isinstance(deliveries, DeliveryList) and deliveries.data == []
        problem(call("trainings.redeliver_training_webhook", training.id), 409, "conflict")
        code, deleted = call("trainings.delete_training", training.id)
        assert code == 204 and deleted is None

        # Metrics, and a drain (no worker is live after its burst: nobody to tell).
        code, metrics = call("health.get_metrics")
        assert code == 200 and isinstance(metrics, str) and "sdserve_" in metrics
        code, drained = call("admin.drain_workers", body=DrainRequest(model="tiny"))
        assert code == 200 and isinstance(drained, Drained) and drained.workers == []

    assert called == sdk_operations()  # every operation the SDK has, none left out
