"""The Dockerfile: hadolint-clean, and two final images shaped as the architecture says.

Docker itself cannot run here, so the image is checked by reading the file: hadolint (with its
ShellCheck pass over every RUN) for the lint, and a small parser of stages for the structure.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def text(self) -> str:
        return "\n".join(f"{kw} {args}" for kw, args in self.instructions)


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name (comments dropped, continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?i)(\S+)\s+AS\s+(\S+)", rest.strip())
            assert match, f"every stage is named: {line}"
            current = Stage(match.group(2), match.group(1))
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", line
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse(DOCKERFILE.read_text())


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"  # the same file with a classic mistake added must fail
    broken.write_text(DOCKERFILE.read_text() + "\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run([tool("hadolint"), "--no-color", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3013" in result.stdout  # unpinned pip install


def test_two_final_targets_from_the_right_bases(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    args, stages = dockerfile
    assert {"gateway", "worker"} <= set(stages)
    gateway, worker = stages["gateway"], stages["worker"]
    assert gateway.base == "${PYTHON_IMAGE}" and "slim" in args["PYTHON_IMAGE"]
    assert worker.base == "${CUDA_IMAGE}" and re.fullmatch(
        r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"]
    )
    for stage in (gateway, worker):
        assert stage.all("ENTRYPOINT") == ['["sdserve"]']
        assert stage.all("CMD") == [f'["{stage.name}"]']


def test_final_images_run_unprivileged_with_a_healthcheck(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    for name in ("gateway", "worker"):
        stage = stages[name]
        users = stage.all("USER")
        assert users and users[-1].split(":")[0] not in {"0", "root"}, f"{name} must not run as root"
        (check,) = stage.all("HEALTHCHECK")
        assert check.startswith("--") and " CMD " in f" {check} "
    assert "/readyz" in stages["gateway"].all("HEALTHCHECK")[0]
    assert "SDSERVE_READY_FILE" in stages["worker"].all("HEALTHCHECK")[0]


def test_gateway_has_no_torch_and_final_images_no_build_tools(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    build = stages["gateway-build"].text()
    assert ".[gateway" in build and "torch" not in build and "worker]" not in build
    for name in ("gateway", "worker"):
        final = stages[name].text()
        # The final images copy the built environment; nothing is compiled or pip-installed there.
        assert "pip install" not in final
        assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|python3[.\d]*-dev|python3[.\d]*-venv", final)
        assert "COPY --from=" in final and "/opt/venv" in final


def test_worker_build_has_torch_diffusers_and_optional_xformers(
    dockerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    build = stages["worker-build"].text()
    assert '"torch==${TORCH_VERSION}"' in build
    assert ".[worker" in build  # diffusers, transformers, safetensors come with the worker extra
    assert "xformers" in build and "SDPA" in build  # installed when a wheel matches, else the worker uses SDPA


def test_dockerignore_keeps_local_state_out() -> None:
    rules = [
        r.strip() for r in (REPO / ".dockerignore").read_text().splitlines() if r.strip() and not r.startswith("#")
    ]
    assert rules[0] == "*"  # an allow-list: .venv, data/, .env, .git never reach the build context
    allowed = {r.removeprefix("!").rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "sdserve", "app", "worker"}
