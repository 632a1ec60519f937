"""Create image jobs: ``POST /v1/txt2img``, ``/v1/img2img``, ``/v1/inpaint``, ``/v1/outpaint``.

One route per task, made by one factory over the task's request model; each takes ``Idempotency-Key``
(retry-safe creation) and ``Prefer: wait=N`` (hold the request until the job ends, up to N seconds) and
hands over to the engine's accept flow (``app.jobs.accept``).
"""

# No `from __future__ import annotations` here: FastAPI reads these endpoints' annotations, which name
# models chosen at run time (each kind's own), so they must be real objects, not strings.

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response, status

from app.deps import CallerDep, StateDep
from app.errors import problem_responses
from app.jobs.accept import IdempotencyKey, Prefer, accept
from sdserve.images.requests import REQUEST_MODELS, Task
from sdserve.images.view import Job

if TYPE_CHECKING:
    from app.jobs.kind import GatewayKind

_FOLLOW = (
    " Answers 202 with the job and a `Location` header; poll that URL (or stream its events, or pass "
    "`Prefer: wait=N`) until the job `succeeded`, then fetch each image's signed URL."
)

ROUTES: dict[Task, tuple[str, str, str]] = {
    "txt2img": ("createTxt2ImgJob", "Generate images from a prompt", "Accept a txt2img job and queue it."),
    "img2img": (
        "createImg2ImgJob",
        "Transform an image guided by a prompt",
        "Accept an img2img job: `strength` sets how far the result departs from `image`; the output is the image's "
        "size rounded to a multiple of 8 unless `width`/`height` say otherwise (`resize_mode`).",
    ),
    "inpaint": (
        "createInpaintJob",
        "Repaint the masked part of an image",
        "Accept an inpaint job: white in `mask` (or transparency, with `mask_source: alpha`) is repainted; wherever "
        "the final mask (after `mask_grow` and `mask_blur`) is 0, the output equals the input bit for bit.",
    ),
    "outpaint": (
        "createOutpaintJob",
        "Extend an image beyond its borders",
        "Accept an outpaint job: the output is the image extended by exactly `left`, `right`, `top` and `bottom` "
        "pixels; original pixels farther than `feather` from the new area are unchanged.",
    ),
}

ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job is queued; `Location` is its URL.",
        "headers": {"Location": {"description": "URL of the job.", "schema": {"type": "string"}}},
    },
    200: {
        "description": "With `Prefer: wait=N`: the job ended within N seconds (succeeded, failed or canceled); "
        "or an `Idempotency-Key` replay of a job that has ended.",
        "model": Job,
    },
    **problem_responses(413, 422, 429, 503, 507),
}


def create_router(gateway_kind: "GatewayKind") -> APIRouter:
    """The four create endpoints."""
    router = APIRouter(prefix="/v1", tags=["images"])
    for task, model in REQUEST_MODELS.items():
        operation_id, summary, description = ROUTES[task]

        def make(body_model: type[Any]) -> Any:
            async def create(
                body: Any,
                response: Response,
                state: StateDep,
                caller: CallerDep,
                idempotency_key: IdempotencyKey = None,
                prefer: Prefer = None,
            ) -> Any:
                return await accept(
                    state, gateway_kind, body, caller, response, idempotency_key=idempotency_key, prefer=prefer
                )

            create.__annotations__["body"] = body_model  # the task's own request model (resolved, not a string)
            return create

        router.add_api_route(
            f"/{task}",
            make(model),
            methods=["POST"],
            status_code=status.HTTP_202_ACCEPTED,
            response_model=Job,
            operation_id=operation_id,
            summary=summary,
            description=description + _FOLLOW,
            responses=ACCEPTED,
        )
    return router
