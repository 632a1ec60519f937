"""Trainings on the gateway: ``POST /v1/trainings`` (JSON or multipart), and how a request becomes a job.

``prepare`` checks, in order, everything that can be refused (the base model, the name of the result, the
dataset, the trigger word's token), resolves every default, and only then stores what it must (the dataset
manifest of an inline image list). The name of the result is reserved for the training in the same step, so
two trainings cannot both make ``my-style``; a training that fails, is canceled or deleted gives it back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.deps import Caller, CallerDep, StateDep
from app.errors import problem_responses
from app.jobs.accept import IdempotencyKey, Prefer, accept
from app.jobs.queue import NewJob
from app.state import GatewayState
from app.trainings import names
from app.uploads.datasets import (
    MAX_DATASET_BYTES,
    DatasetInvalid,
    DatasetItem,
    DatasetManifest,
    check_files,
    dataset_hash,
    is_zip,
    read_zip,
)
from app.uploads.routes import dataset_upload
from sdserve.contract.problems import Conflict, NotFound, UnsupportedMediaType, UnusableInput
from sdserve.jobs.record import JobRecord
from sdserve.storage.base import check_key, inputs_prefix
from sdserve.trainings.defaults import resolve
from sdserve.trainings.kind import TRAINING, TrainingKind, queue_for
from sdserve.trainings.requests import DatasetImages, TrainingRequest
from sdserve.trainings.view import Training

MULTIPART_EXTRA = 1024 * 1024
"""Room for the multipart headers and the `request` part beside the dataset."""
MAX_REQUEST_PART = 64 * 1024
"""Largest `request` part of a multipart training."""


def _validation_error(exc: ValidationError) -> RequestValidationError:
    errors = []
    for found in exc.errors(include_url=False):
        error = dict(found)
        error["loc"] = ("body", *found.get("loc", ()))
        errors.append(error)
    return RequestValidationError(errors)


def parse_json(raw: bytes, *, dataset: str | None = None) -> TrainingRequest:
    """A training request from JSON text (with ``dataset`` filled in for a multipart one)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}", "input": None}]
        ) from None
    if dataset is not None and isinstance(data, dict):
        if "dataset" in data:
            raise RequestValidationError(
                [{"type": "extra_forbidden", "loc": ("body", "request", "dataset"), "input": data["dataset"],
                  "msg": "a multipart training takes its dataset from its files, not from `request`"}]
            )  # fmt: skip
        data["dataset"] = dataset
    try:
        return TrainingRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


class TrainingGatewayKind:
    """The training kind's gateway side."""

    kind: TrainingKind = TRAINING
    body_limits = {"/v1/trainings": MAX_DATASET_BYTES + MULTIPART_EXTRA}

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/v1", tags=["trainings"])
        schema_ref = {"$ref": "#/components/schemas/TrainingRequest"}

        @router.post(
            "/trainings",
            status_code=status.HTTP_202_ACCEPTED,
            response_model=Training,
            operation_id="createTraining",
            summary="Train a LoRA or a textual-inversion embedding",
            description="Start a training on your images. Send JSON (`dataset`: a dataset upload id, or image "
            "upload ids with captions), or multipart: a `request` part (the same JSON without `dataset`) and either "
            "one `dataset` part (a zip) or `files` parts (images, and same-name `.txt` captions). Follow it at "
            "`/v1/trainings/{id}` (progress with loss, learning rate and ETA; SSE events with the loss curve and "
            "validation images); once it succeeded its result is usable by `name` in your image jobs at once.",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": schema_ref},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["request"],
                                "properties": {
                                    "request": {
                                        "type": "string",
                                        "description": "The TrainingRequest as JSON, without `dataset`.",
                                    },
                                    "dataset": {
                                        "type": "string",
                                        "format": "binary",
                                        "description": "A zip of images and captions.",
                                    },
                                    "files": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                        "description": "Images and same-name .txt captions.",
                                    },
                                },
                            }
                        },
                    },
                }
            },
            responses={
                202: {"headers": {"Location": {"description": "URL of the training.", "schema": {"type": "string"}}}},
                200: {"description": "With `Prefer: wait=N`: the training ended within N seconds.", "model": Training},
                **problem_responses(409, 413, 415, 422, 429, 503, 507),
            },
        )
        async def create_training(
            request: Request,
            response: Response,
            state: StateDep,
            caller: CallerDep,
            idempotency_key: IdempotencyKey = None,
            prefer: Prefer = None,
        ) -> Any:
            body = await self.read_body(request, state, caller)
            return await accept(state, self, body, caller, response, idempotency_key=idempotency_key, prefer=prefer)

        return router

    async def read_body(self, request: Request, state: GatewayState, caller: Caller) -> TrainingRequest:
        """The training request of a JSON or multipart body (a multipart dataset is stored as a dataset upload,
        found again by its hash, so a retried request names the same dataset)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json" or content_type.endswith("+json"):
            return parse_json(await request.body())
        if content_type != "multipart/form-data":
            raise UnsupportedMediaType("send application/json or multipart/form-data")
        form = await request.form(max_files=2 * 200 + 8, max_fields=16, max_part_size=MAX_REQUEST_PART)
        try:
            raw = form.get("request")
            if raw is None:
                raise DatasetInvalid("body.request", "a multipart training needs a `request` part (JSON)")
            text = raw if isinstance(raw, str) else (await raw.read(MAX_REQUEST_PART + 1)).decode("utf-8", "replace")
            zipped = form.get("dataset")
            loose = [f for f in form.getlist("files") if not isinstance(f, str)]
            if zipped is not None and loose:
                raise DatasetInvalid("body.files", "send a `dataset` zip or `files`, not both")
            files: list[tuple[str, bytes]]
            if zipped is not None and not isinstance(zipped, str):
                data = await zipped.read(MAX_DATASET_BYTES + 1)
                if not is_zip(data):
                    raise DatasetInvalid("body.dataset", "the dataset part is not a zip file")
                files = await asyncio.to_thread(read_zip, data, "body.dataset")
                field, size = "body.dataset", len(data)
            elif loose:
                files, size = [], 0
                for upload in loose:
                    content = await upload.read(MAX_DATASET_BYTES + 1)
                    size += len(content)
                    if size > MAX_DATASET_BYTES:
                        raise DatasetInvalid("body.files", f"the files pass {MAX_DATASET_BYTES:,} bytes in all")
                    files.append((upload.filename or f"file{len(files)}", content))
                field = "body.files"
            else:
                raise DatasetInvalid("body.dataset", "a multipart training needs a `dataset` zip or `files`")
        finally:
            await form.close()
        parse_json(text.encode(), dataset="upl_" + "0" * 32)  # refuse a bad request before storing anything
        checked = await asyncio.to_thread(check_files, files, field)
        stored = await dataset_upload(state, caller.owner, checked, size)
        return parse_json(text.encode(), dataset=stored.id)

    def queue_of(self, body: Any, state: GatewayState) -> str:
        request: TrainingRequest = body
        return queue_for(request.base_model or state.registry.default_model)

    async def prepare(self, body: Any, state: GatewayState, caller: Caller, job_id: str) -> NewJob:
        request: TrainingRequest = body
        registry = state.registry
        spec = registry.model(request.base_model)
        resolved = resolve(request, spec)
        inputs: dict[str, str]
        input_ids: list[str]
        if isinstance(request.dataset, str):
            try:
                dataset = await state.uploads.get_dataset(request.dataset, caller.owner)
            except NotFound:
                raise UnusableInput(
                    "body.dataset", f"no dataset upload {request.dataset} of yours (unknown, expired, or deleted "
                    "with a training)",
                ) from None  # fmt: skip
            inputs = {"dataset": dataset.manifest_key}  # every file is an input: deleted with the training
            inputs.update({f"dataset-{i:04d}": f"{dataset.prefix}/{i:04d}.png" for i in range(dataset.images)})
            input_ids, images, dataset_sha = [dataset.id], dataset.images, dataset.sha256
        else:
            manifest = await self.inline_manifest(request.dataset, state, caller)
            images, dataset_sha = manifest.count, manifest.sha256
            input_ids = [item.image for item in request.dataset.images]
            inputs = {"dataset": check_key(f"{inputs_prefix(job_id)}/dataset.json")}
            inputs.update({f"dataset-{i:04d}": item.key for i, item in enumerate(manifest.images)})
        kind: Literal["lora", "embedding"] = "lora" if request.method == "lora" else "embedding"
        await names.reserve(state, caller.owner, kind, request.name, request.trigger_word, job_id, spec)
        try:
            if not isinstance(request.dataset, str):
                await asyncio.to_thread(
                    state.store.put, inputs["dataset"], manifest.model_dump_json().encode(), "application/json"
                )
        except BaseException:
            await names.release(state, caller.owner, request.name, job_id)
            raise
        hp = resolved.hyperparameters
        return NewJob(
            job_id=job_id,
            kind=TRAINING.name,
            task=request.method,
            model=spec.name,
            queue=queue_for(spec.name),
            request=resolved.model_dump(mode="json"),
            total=int(hp.steps or 1),
            timeout=state.settings.training_timeout_seconds,
            inputs=inputs,
            input_ids=input_ids,
            metadata=resolved.metadata,
            webhook=resolved.webhook,
            description=f"{request.method} {spec.name} {request.name} ({images} images, dataset {dataset_sha[:12]})",
        )

    async def inline_manifest(self, dataset: DatasetImages, state: GatewayState, caller: Caller) -> DatasetManifest:
        """A manifest of image uploads (each one the caller's own image)."""
        items: list[DatasetItem] = []
        for i, entry in enumerate(dataset.images):
            try:
                upload = await state.uploads.get(entry.image, caller.owner)
            except NotFound:
                raise UnusableInput(
                    f"body.dataset.images.{i}.image", f"no image upload {entry.image} of yours (unknown, expired, "
                    "or deleted with a job)",
                ) from None  # fmt: skip
            if upload.kind != "image":
                raise UnusableInput(f"body.dataset.images.{i}.image", f"upload {entry.image} is a mask, not an image")
            from sdserve.trainings.requests import MIN_TRAINING_IMAGE_SIDE

            if min(upload.width, upload.height) < MIN_TRAINING_IMAGE_SIDE:
                raise DatasetInvalid(
                    f"body.dataset.images.{i}.image",
                    f"the image is {upload.width}x{upload.height}; each side must be at least "
                    f"{MIN_TRAINING_IMAGE_SIDE}",
                )
            items.append(
                DatasetItem(
                    key=upload.key, name=f"{i:04d}-{upload.id}", caption=entry.caption, width=upload.width,
                    height=upload.height, sha256=upload.sha256,
                )
            )  # fmt: skip
        return DatasetManifest(
            sha256=dataset_hash([(i.name, i.sha256, i.caption) for i in items]), count=len(items), images=items
        )

    async def before_delete(self, state: GatewayState, record: JobRecord, caller: Caller) -> None:
        """Deleting a training deletes its adapter, or refuses (409) while queued or running jobs use it."""
        request = TrainingRequest.model_validate(record.request)
        users = await names.users(state, caller.owner, request.name, record.id)
        if users:
            shown = ", ".join(users[:10]) + (" ..." if len(users) > 10 else "")
            raise Conflict(
                f"{request.name!r} is used by {len(users)} queued or running job(s) ({shown}): delete the "
                "training when they have ended, or cancel them"
            )
        await names.drop(state, caller.owner, request.name, record.id)


TRAININGS = TrainingGatewayKind()
