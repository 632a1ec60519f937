"""The registry: built-in models and styles, and the operator's TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdserve.contract.problems import InvalidRequest, UnknownName
from sdserve.registry import Registry


def test_builtin_tiny_is_the_default() -> None:
    reg = Registry.load(None, "tiny")
    assert reg.model(None).name == "tiny"
    assert reg.model("tiny").source == "builtin:tiny"
    assert {"photographic", "anime", "cinematic", "digital-art", "pixel-art"} <= set(reg.styles)
    with pytest.raises(UnknownName):
        reg.model("nope")
    with pytest.raises(UnknownName):
        reg.style("nope")


def test_toml_adds_models_and_styles(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(
        'default_model = "sd15"\n'
        "[models.sd15]\n"
        'source = "/models/sd15"\n'
        "native_size = 512\n"
        "[styles.noir]\n"
        'prompt = "{prompt}, film noir"\n'
        'negative_prompt = "colour"\n'
    )
    reg = Registry.load(path, "tiny")
    assert reg.default_model == "sd15"
    assert {"tiny", "tiny-sdxl", "sd15"} <= set(reg.models)
    assert reg.style("noir").apply("a cat", "blurry") == ("a cat, film noir", "blurry, colour")


@pytest.mark.parametrize(
    "text",
    [
        "[models.'../etc']\nsource = 'x'\n",
        "[models.ok]\nsource = 'x'\nfamily = 'sd9'\n",
        "[models.ok]\nsource = 'x'\nsurprise = 1\n",
        "[styles.s]\nprompt = 'no placeholder'\n",
        "default_model = 'missing'\n",
        "not toml at all [",
    ],
)
def test_bad_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest):
        Registry.load(path, "tiny")


def test_builtins_can_be_left_out(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("include_builtin = false\ndefault_model = 'x'\n[models.x]\nsource = '/m/x'\n")
    assert set(Registry.load(path, "tiny").models) == {"x"}
