"""The job contract: limits live in the schema and are enforced by the models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.limits import MAX_PIXELS, SCHEDULER_NAMES
from sdserve.images.requests import Txt2ImgRequest


def test_defaults_are_unresolved_until_the_gateway_fills_them() -> None:
    req = Txt2ImgRequest(prompt="a cat")
    assert (req.model, req.width, req.height, req.steps, req.seed, req.scheduler) == (None,) * 6
    assert req.num_images == 1 and req.task == "txt2img" and req.output.format == "png"


@pytest.mark.parametrize(
    "fields",
    [
        {"width": 100},
        {"width": 56},
        {"height": 3080},
        {"num_images": 9},
        {"steps": 151},
        {"guidance_scale": -1},
        {"seed": 2**32},
        {"scheduler": "nope"},
        {"task": "img2img"},
        {"extra": True},
        {"loras": [{"name": "a"}, {"name": "a"}]},
        {"loras": [{"name": f"l{i}"} for i in range(5)]},
        {"loras": [{"name": "a", "scale": 3}]},
        {"webhook": {"url": "ftp://example.com/x"}},
        {"width": 3072, "height": 1600},
    ],
)
def test_out_of_bounds_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Txt2ImgRequest.model_validate({"prompt": "a cat", **fields})


def test_every_bound_is_in_the_json_schema() -> None:
    props = Txt2ImgRequest.model_json_schema()["properties"]

    def bounds(name: str) -> dict[str, object]:
        spec = props[name]
        for option in spec.get("anyOf", [spec]):
            if option.get("type") != "null":
                return option  # type: ignore[no-any-return]
        raise AssertionError(name)

    assert bounds("width") == {"type": "integer", "minimum": 64, "maximum": 3072, "multipleOf": 8}
    assert bounds("steps")["maximum"] == 150
    assert bounds("seed")["maximum"] == 2**32 - 1
    assert props["num_images"]["maximum"] == 8
    assert props["prompt"]["maxLength"] == 2000
    assert props["loras"]["maxItems"] == 4
    assert set(bounds("scheduler")["enum"]) == set(SCHEDULER_NAMES)  # type: ignore[arg-type]
    assert f"{MAX_PIXELS:,}" in props["width"]["description"]


def test_terminal_states() -> None:
    assert [s.value for s in JobStatus if s.is_terminal] == ["succeeded", "failed", "canceled"]
