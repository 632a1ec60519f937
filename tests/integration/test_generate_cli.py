"""`sdserve generate` against a live gateway, with a real worker running in a background thread."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image, ImageDraw

from sdserve.generate import ProgressBar, add_parser, parse_sse, run
from sdserve.settings import Settings
from tests.conftest import background_worker, free_port, wait_for

pytestmark = pytest.mark.integration

NAME = re.compile(r"^(?P<job>[0-9a-f-]{36})_(?P<index>\d+)_(?P<seed>\d+)\.png$")


@pytest.fixture
def worker(settings: Settings, redis_client: redis.Redis, pipelines: Any) -> Iterator[None]:
    with background_worker(settings, redis_client, pipelines):
        yield


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["generate", *argv])


def generate(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(parse(*argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_txt2img_saves_every_image_named_by_job_index_and_seed(gateway: str, worker: None, tmp_path: Path) -> None:
    status, out, err = generate(
        "a lighthouse at dusk", "--url", gateway, "--out", str(tmp_path / "images"),
        "--width", "64", "--height", "72", "--steps", "3", "--seed", "41", "--num-images", "2",
    )  # fmt: skip
    assert status == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert len(paths) == 2
    names = [NAME.match(p.name) for p in paths]
    assert all(names), paths
    assert [(m["index"], m["seed"]) for m in names if m] == [("0", "41"), ("1", "42")]
    assert len({m["job"] for m in names if m}) == 1
    for path in paths:
        assert path.parent == tmp_path / "images"
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size == (64, 72)
    job_id = names[0]["job"] if names[0] else ""
    assert f"job {job_id}: txt2img on tiny, 64×72, 3 steps, seed 41" in err
    assert "3/3" in err and "100%" in err and "succeeded" in err  # the progress bar, fed by the events


def test_inpaint_uploads_image_and_mask(gateway: str, worker: None, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (30, 90, 160)).save(image)
    mask = tmp_path / "mask.png"
    painted = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(painted).rectangle((16, 16, 47, 47), fill=255)
    painted.save(mask)
    status, out, err = generate(
        "a yellow star", "--task", "inpaint", "--image", str(image), "--mask", str(mask),
        "--steps", "2", "--url", gateway, "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert err == ""  # --quiet: only the paths, on stdout
    (path,) = [Path(line) for line in out.splitlines()]
    with Image.open(path) as result, Image.open(image) as original:
        assert result.size == (64, 64)
        assert result.getpixel((2, 2)) == original.getpixel((2, 2))  # outside the mask: unchanged


def test_refused_request_prints_the_problem_and_fields(gateway: str, tmp_path: Path) -> None:
    status, out, err = generate("x", "--width", "250", "--steps", "0", "--url", gateway, "--out", str(tmp_path))
    assert status == 2
    assert out == ""
    assert "The request is invalid (HTTP 422)" in err
    assert "  body.width: Input should be a multiple of 8" in err
    assert "  body.steps: " in err
    assert "request id: " in err


def test_bad_arguments_and_unreachable_gateway(tmp_path: Path) -> None:
    status, _, err = generate("x", "--task", "img2img", "--url", "http://127.0.0.1:9")
    assert status == 2 and "--task img2img needs --image" in err
    status, _, err = generate("x", "--task", "inpaint", "--image", str(tmp_path / "missing.png"))
    assert status == 2 and "no such file" in err
    status, _, err = generate("x", "--url", f"http://127.0.0.1:{free_port()}", "--quiet")
    assert status == 1 and "cannot reach the gateway" in err


def test_a_job_canceled_meanwhile_exits_non_zero(gateway: str, client: httpx.Client, tmp_path: Path) -> None:
    """No worker: the job waits in the queue, is canceled through the API, and the command says so."""
    result: list[tuple[int, str, str]] = []
    thread = threading.Thread(target=lambda: result.append(generate("x", "--steps", "2", "--url", gateway)))
    thread.start()
    job = wait_for(lambda: client.get("/v1/jobs").json()["data"], timeout=20)[0]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    thread.join(30)
    status, out, err = result[0]
    assert status == 1 and out == ""
    assert f"job {job['id']} canceled" in err
    assert "queued (position 0)" in err


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = ProgressBar(screen)
    bar.show("queued")
    for step in range(1, 5):
        bar.show("running", step, 4)
    bar.done()
    text = screen.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "#" * 30 + "] 100% 4/4 running" in text

    log = io.StringIO()  # not a terminal: a line per visible change only
    bar = ProgressBar(log)
    for step in range(1, 101):
        bar.show("running", step, 100)
    assert 1 < len(log.getvalue().splitlines()) <= 31


def test_event_stream_parser() -> None:
    lines = [": ping", "id: 1-0", "event: progress", 'data: {"step": 1,', 'data: "total": 2}', "", "event: x", ""]
    (event,) = parse_sse(iter(lines))
    assert (event.name, event.id, event.data) == ("progress", "1-0", {"step": 1, "total": 2})


def test_the_command_is_a_plain_http_client() -> None:
    """No FastAPI, no torch, nothing of the gateway or the worker is imported to run it."""
    probe = (
        "import sys, sdserve.generate; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'torch', 'app', 'worker'}))"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert answer.stdout.strip() == "[]"
