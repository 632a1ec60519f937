"""``GET /problems/{slug}``: what each problem ``type`` means (problem types resolve here, from the catalogue)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict

from app.errors import problem_responses
from sdserve.contract.problems import NotFound, catalogue

router = APIRouter(tags=["problems"])


class ProblemType(BaseModel):
    """The documentation of one problem type."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "description": "No such job or file, or it has expired.",
                }
            ]
        }
    )

    type: str
    title: str
    status: int
    description: str


@router.get(
    "/problems/{slug}",
    response_model=ProblemType,
    operation_id="getProblemType",
    summary="Explain a problem type",
    description="What a problem `type` means: every error response's `type` resolves here.",
    responses=problem_responses(404, 422),
)
async def get_problem_type(
    slug: Annotated[str, Path(max_length=64, description="Problem slug.", examples=["not-found"])],
) -> ProblemType:
    problem = catalogue().get(slug)
    if problem is None:
        raise NotFound(f"no problem type {slug!r}")
    return ProblemType(type=problem.type, title=problem.title, status=problem.status, description=problem.description)
