"""What can be asked for: ``GET /v1/models``, ``/v1/schedulers``, ``/v1/styles``, ``/v1/loras``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.deps import CallerDep, StateDep
from app.errors import problem_responses
from sdserve.contract.limits import MAX_NAME_CHARS
from sdserve.contract.problems import FieldError, UnknownName
from sdserve.registry.owned import OwnedAdapter

router = APIRouter(prefix="/v1", tags=["catalog"])


class LoraInfo(BaseModel):
    """A LoRA a job may name in `loras`."""

    name: str
    family: str = Field(description="The model family it fits: `sd1` or `sdxl`.")
    base_models: list[str] = Field(description="Models it fits (empty: every model of its family).")
    default_scale: float
    trigger_words: list[str]
    description: str
    owned: bool = Field(default=False, description="Yours: trained by your API key (no other key sees it).")
    training_id: str | None = Field(default=None, description="The training that made it (yours only).")


class EmbeddingInfo(BaseModel):
    """A textual-inversion embedding: write its token in a prompt."""

    name: str
    token: str
    family: str
    base_models: list[str]
    description: str
    owned: bool = Field(default=False, description="Yours: trained by your API key (no other key sees it).")
    training_id: str | None = Field(default=None, description="The training that made it (yours only).")


class LoraList(BaseModel):
    """LoRAs, and the textual-inversion embeddings usable through their tokens."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "name": "tiny-detail",
                            "family": "sd1",
                            "base_models": ["tiny"],
                            "default_scale": 1.0,
                            "trigger_words": ["detailed"],
                            "description": "Demo LoRA for tiny.",
                            "owned": False,
                            "training_id": None,
                        },
                        {
                            "name": "my-style",
                            "family": "sd1",
                            "base_models": ["demo"],
                            "default_scale": 1.0,
                            "trigger_words": ["mystyle"],
                            "description": "",
                            "owned": True,
                            "training_id": "01a2141e-8035-722a-ae56-08d956773a96",
                        },
                    ],
                    "embeddings": [
                        {
                            "name": "tiny-sparkle",
                            "token": "<tiny-sparkle>",
                            "family": "sd1",
                            "base_models": ["tiny"],
                            "description": "Demo embedding for tiny.",
                            "owned": False,
                            "training_id": None,
                        }
                    ],
                }
            ]
        }
    )

    data: list[LoraInfo]
    embeddings: list[EmbeddingInfo]


class ModelInfo(BaseModel):
    """A model a job may name."""

    name: str
    family: str = Field(description="`sd1` (Stable Diffusion 1.x) or `sdxl`.")
    description: str
    native_size: int = Field(description="Default width and height.")
    default_steps: int
    default_guidance: float
    default_scheduler: str
    schedulers: list[str] = Field(description="The schedulers offered for it (each draws well at its default steps).")
    default: bool = Field(description="Used when a request names no model.")
    workers: list[str] = Field(description="Live workers serving this model now.")
    warm: bool = Field(description="At least one live worker has it loaded (resident) and is ready.")
    queued: int = Field(description="Jobs waiting for it.")


class ModelList(BaseModel):
    """Every model in the registry."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "name": "tiny",
                            "family": "sd1",
                            "description": "Stable Diffusion 1.x architecture with small random weights.",
                            "native_size": 256,
                            "default_steps": 20,
                            "default_guidance": 7.0,
                            "default_scheduler": "euler",
                            "schedulers": ["euler", "euler_a", "dpmpp_2m"],
                            "default": True,
                            "workers": ["gpu-node-1.4211"],
                            "warm": True,
                            "queued": 3,
                        }
                    ]
                }
            ]
        }
    )

    data: list[ModelInfo]


class SchedulerList(BaseModel):
    """Scheduler names."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": ["euler", "euler_a", "dpmpp_2m"]}]})

    data: list[str]


class StyleInfo(BaseModel):
    name: str
    prompt: str = Field(description="Template; `{prompt}` stands for the request's prompt.")
    negative_prompt: str


class StyleList(BaseModel):
    """Style presets."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "name": "pixel-art",
                            "prompt": "pixel-art {prompt}, low-res, blocky, pixel art style, 8-bit graphics",
                            "negative_prompt": "smooth, realistic, photographic",
                        }
                    ]
                }
            ]
        }
    )

    data: list[StyleInfo]


@router.get(
    "/models",
    response_model=ModelList,
    operation_id="listModels",
    summary="List models",
    responses=problem_responses(503),
)
async def list_models(state: StateDep) -> ModelList:
    """Every model in the registry, with the live workers that serve it."""
    registry = state.registry
    workers = await state.queue.live_workers()
    data = []
    for spec in registry.models.values():
        serving = [name for name, w in workers.items() if spec.name in w.models]
        warm = any(workers[name].ready and spec.name in workers[name].resident for name in serving)
        data.append(
            ModelInfo(
                name=spec.name,
                family=spec.family,
                description=spec.description,
                native_size=spec.native_size,
                default_steps=spec.default_steps,
                default_guidance=spec.default_guidance,
                default_scheduler=spec.default_scheduler,
                schedulers=registry.schedulers_for(spec),
                default=spec.name == registry.default_model,
                workers=sorted(serving),
                warm=warm,
                queued=await state.queue.queue_depth(spec.name),
            )
        )
    return ModelList(data=data)


@router.get(
    "/schedulers",
    response_model=SchedulerList,
    operation_id="listSchedulers",
    summary="List schedulers",
    responses=problem_responses(422),
)
async def list_schedulers(
    state: StateDep,
    model: Annotated[
        str | None, Query(max_length=MAX_NAME_CHARS, description="Only the schedulers this model offers.")
    ] = None,
) -> SchedulerList:
    """Scheduler (sampler) names a request may use: with `model`, those that model offers (each draws well at the
    model's default steps); without, every name any model may offer."""
    registry = state.registry
    if model is None:
        return SchedulerList(data=list(registry.schedulers()))
    try:
        spec = registry.model(model)
    except UnknownName as exc:
        raise UnknownName(exc.detail, errors=[FieldError("query.model", "unknown model")]) from None
    return SchedulerList(data=registry.schedulers_for(spec))


@router.get("/styles", response_model=StyleList, operation_id="listStyles", summary="List style presets")
async def list_styles(state: StateDep) -> StyleList:
    """Style presets: each wraps the prompt and negative prompt."""
    registry = state.registry
    return StyleList(
        data=[
            StyleInfo(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in registry.styles.values()
        ]
    )


@router.get(
    "/loras",
    response_model=LoraList,
    operation_id="listLoras",
    summary="List LoRAs and embeddings",
    responses=problem_responses(503),
)
async def list_loras(state: StateDep, caller: CallerDep) -> LoraList:
    """LoRAs a job may combine (up to 4, each with a scale), and the textual-inversion embeddings whose tokens
    work in prompts of the models they fit: the deployment's, then your own (`owned`, trained by your key)."""
    registry = state.registry
    mine = await state.owned.list_owned(caller.owner)  # a registry name or token that came later wins
    tokens = {e.token for e in registry.embeddings.values()}
    return LoraList(
        data=[
            LoraInfo(
                name=s.name,
                family=s.family,
                base_models=s.base_models,
                default_scale=s.default_scale,
                trigger_words=s.trigger_words,
                description=s.description,
            )
            for s in registry.loras.values()
        ]
        + [_owned_lora(a) for a in mine if a.kind == "lora" and a.name not in registry.loras],
        embeddings=[
            EmbeddingInfo(
                name=e.name, token=e.token, family=e.family, base_models=e.base_models, description=e.description
            )
            for e in registry.embeddings.values()
        ]
        + [_owned_embedding(a) for a in mine if a.kind == "embedding" and a.token not in tokens],
    )


def _owned_lora(adapter: OwnedAdapter) -> LoraInfo:
    return LoraInfo(
        name=adapter.name,
        family=adapter.family,
        base_models=adapter.base_models,
        default_scale=adapter.default_scale,
        trigger_words=adapter.trigger_words,
        description=adapter.description,
        owned=True,
        training_id=adapter.training_id,
    )


def _owned_embedding(adapter: OwnedAdapter) -> EmbeddingInfo:
    assert adapter.token is not None, "an embedding has a token"
    return EmbeddingInfo(
        name=adapter.name,
        token=adapter.token,
        family=adapter.family,
        base_models=adapter.base_models,
        description=adapter.description,
        owned=True,
        training_id=adapter.training_id,
    )
