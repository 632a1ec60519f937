"""Resolution fills every default before a job is stored."""

from __future__ import annotations

import pytest

from app.images.resolve import check_request, resolve_request
from sdserve.contract.problems import UnknownName
from sdserve.images.requests import AnyRequest, Txt2ImgRequest
from sdserve.registry import Registry


def resolve(request: AnyRequest, registry: Registry) -> AnyRequest:
    """What the gateway does with a txt2img request: check it, then fill in every default."""
    return resolve_request(request, check_request(request, registry), registry)


def test_defaults_come_from_the_model() -> None:
    out = resolve(Txt2ImgRequest(prompt="a cat"), Registry.load(None, "tiny"))
    assert (out.model, out.width, out.height, out.steps, out.guidance_scale, out.scheduler) == (
        "tiny",
        256,
        256,
        20,
        7.0,
        "euler",
    )
    assert out.seed is not None and 0 <= out.seed < 2**32


def test_explicit_values_win_and_random_seeds_differ() -> None:
    reg = Registry.load(None, "tiny")
    req = Txt2ImgRequest(prompt="a", width=64, height=128, steps=3, guidance_scale=0, scheduler="ddim", seed=0)
    out = resolve(req, reg)
    assert (out.width, out.height, out.steps, out.guidance_scale, out.scheduler, out.seed) == (
        64,
        128,
        3,
        0,
        "ddim",
        0,
    )
    seeds = {resolve(Txt2ImgRequest(prompt="a"), reg).seed for _ in range(20)}
    assert len(seeds) > 15


@pytest.mark.parametrize("field", [{"model": "nope"}, {"style": "nope"}, {"loras": [{"name": "nope"}]}])
def test_unknown_names(field: dict[str, object]) -> None:
    with pytest.raises(UnknownName):
        resolve(Txt2ImgRequest.model_validate({"prompt": "a", **field}), Registry.load(None, "tiny"))
