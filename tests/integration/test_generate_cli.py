"""`sdserve generate` against a live gateway, with a real worker running in a background thread."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from PIL import Image, ImageDraw

from sdserve.cli.generate import ProgressBar, add_parser, build_body, follow, run
from sdserve.settings import Settings
from tests.conftest import background_worker, free_port, wait_for

NAME = re.compile(r"^(?P<job>[0-9a-f-]{36})_(?P<index>\d+)_(?P<seed>\d+)\.png$")


@pytest.fixture
def worker(settings: Settings, redis_client: redis.Redis, pipelines: Any) -> Iterator[None]:
    for model in settings.worker_models:  # loaded (imports and all) in this thread, not the worker's
        pipelines.load(model)
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


def test_lora_takes_a_name_and_an_optional_scale(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("x", "--lora", "tiny-detail", "--lora", "mine:-0.5")
    assert build_body(args, None, None)["loras"] == [{"name": "tiny-detail"}, {"name": "mine", "scale": -0.5}]
    assert "loras" not in build_body(parse("x"), None, None)
    with pytest.raises(SystemExit):
        parse("x", "--lora", "mine:strong")
    assert "the scale of 'mine:strong' is not a number" in capsys.readouterr().err


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


class ScriptedEvents:
    """A real HTTP server playing a job's event stream: one scripted answer per connection, every
    ``Last-Event-ID`` it was sent recorded (the gateway's own streams are tested elsewhere)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.last_event_ids: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.last_event_ids.append(self.headers.get("Last-Event-ID"))
                body = outer.answers.pop(0).encode()
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)  # then the connection ends: a stream that stopped early

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedEvents:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_follow_reads_the_stream_and_resumes_after_the_last_event_it_got() -> None:
    """Comments are skipped, multi-line data is joined, each event moves the bar; when the stream ends early,
    ``follow`` reconnects with ``Last-Event-ID`` and returns the job the terminal event carries."""
    finished = {"id": "job-1", "status": "succeeded", "images": []}
    first = (
        ": ping\n\n"
        'id: 1-0\nevent: queued\ndata: {"queue_position": 3}\n\n'
        "id: 2-0\nevent: started\ndata: {}\n\n"
        'id: 3-0\nevent: progress\ndata: {"step": 1,\ndata: "total": 2}\n\n'
        "event: x\n\n"  # an event this client does not know: ignored
    )
    second = (
        'id: 4-0\nevent: progress\ndata: {"step": 2, "total": 2}\n\n'
        f"id: 5-0\nevent: succeeded\ndata: {json.dumps({'job': finished})}\n\n"
    )
    log = io.StringIO()
    with ScriptedEvents([first, second]) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        job = follow(http, {"id": "job-1"}, ProgressBar(log), timeout=30)
    assert job == finished
    assert server.last_event_ids == [None, "3-0"]  # resumed after the last event it got, not from the start
    lines = log.getvalue().splitlines()
    assert lines[0].endswith("queued (position 3)")
    assert any(line.endswith(" 50% 1/2 running") for line in lines), lines
    assert lines[-1].endswith("100% 2/2 running"), lines


def command_env(**sdserve: str) -> dict[str, str]:
    """The environment of a `sdserve generate` that knows only these SDSERVE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    return env | {f"SDSERVE_{name.upper()}": value for name, value in sdserve.items()}


def run_command(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sdserve.cli", "generate", *argv]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_without_url_it_finds_the_gateway_through_sdserve_port(gateway: str, worker: None, tmp_path: Path) -> None:
    """No --url: the gateway these settings describe (SDSERVE_HOST is unset: 127.0.0.1; SDSERVE_PORT: its port)."""
    port = str(urlsplit(gateway).port)
    assert port != "8000"
    done = run_command(
        tmp_path, command_env(port=port), "a lighthouse", "--width", "64", "--height", "64", "--steps", "2",
        "--seed", "5", "--out", str(tmp_path / "images"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (path,) = [Path(line) for line in done.stdout.splitlines()]
    assert path.parent == tmp_path / "images" and NAME.match(path.name) and path.name.endswith("_0_5.png")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (64, 64)
    assert "succeeded" in done.stderr


def test_without_url_sdserve_public_url_comes_first(gateway: str, tmp_path: Path) -> None:
    """SDSERVE_PUBLIC_URL beats SDSERVE_HOST/SDSERVE_PORT (here a port nothing listens on)."""
    dead = str(free_port())
    refused = run_command(tmp_path, command_env(public_url=gateway, port=dead), "x", "--width", "250", "--quiet")
    assert refused.returncode == 2, refused.stderr  # the gateway answered (422)
    assert "The request is invalid (HTTP 422)" in refused.stderr
    unreachable = run_command(tmp_path, command_env(port=dead), "x", "--quiet")
    assert unreachable.returncode == 1
    assert f"cannot reach the gateway at http://127.0.0.1:{dead}" in unreachable.stderr


def test_the_command_is_a_plain_http_client() -> None:
    """No FastAPI, no torch, nothing of the gateway or the worker is imported to run it."""
    probe = (
        "import sys, sdserve.cli.generate; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'torch', 'app', 'worker'}))"
    )
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert answer.stdout.strip() == "[]"
