"""`sdserve train` against a live gateway, with a real worker training on the demo model in a background thread.

The folder is four held-out demo scenes (two with captions); four steps of a rank-2 LoRA at 64 px take seconds
on a CPU. The command's own lines are asserted, then the `sdserve generate` line it prints is run as is.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from sdserve.cli import train
from sdserve.cli.main import main
from sdserve.settings import Settings
from tests.conftest import background_worker, free_port, wait_for
from tests.integration.test_generate_cli import ScriptedEvents
from train.dataset import held_out_scenes, render

TINY = ["--steps", "4", "--rank", "2", "--batch-size", "1", "--resolution", "64", "--lr", "1e-3", "--seed", "3"]
ID = r"[0-9a-f-]{36}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The demo model served and trained on (it is the default model, as in a plain `sdserve up`)."""
    return settings.model_copy(update={"worker_models": ["demo"], "training_models": ["demo"], "default_model": "demo"})


@pytest.fixture
def worker(settings: Settings, redis_client: redis.Redis, pipelines: Any) -> Iterator[None]:
    for model in settings.worker_models:  # loaded (imports and all) in this thread, not the worker's
        pipelines.load(model)
    with background_worker(settings, redis_client, pipelines):
        yield


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four demo scenes the model never saw, two of them captioned, and a file that is neither."""
    path = tmp_path / "shapes"
    path.mkdir()
    for i, scene in enumerate(held_out_scenes(0, 4)):
        render(scene).save(path / f"scene{i}.png")
    (path / "scene0.txt").write_text("a photo of sks, a shape on a plain background\n")
    (path / "scene2.txt").write_text("sks again")
    (path / ".DS_Store").write_bytes(b"\0")
    (path / "notes").mkdir()  # subfolders are not part of the dataset
    (path / "notes" / "skip.png").write_bytes(b"not sent")
    return path


def sdserve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `sdserve ARGV` in this process; its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_train_follows_the_training_and_prints_a_generate_line_that_works(
    gateway: str, client: httpx.Client, worker: None, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    downloads = tmp_path / "validation"
    status, out, err = sdserve(
        capsys, "train", str(folder), "--name", "my-style", "--trigger", "sks", *TINY,
        "--validate", "a photo of sks", "--validate-every", "2", "--download", str(downloads), "--url", gateway,
    )  # fmt: skip
    assert status == 0, out + err
    assert err == ""
    lines = out.splitlines()
    head = re.fullmatch(
        rf"training ({ID}): lora 'my-style' on demo, 4 images \(2 captioned\), 4 steps, trigger 'sks'", lines[0]
    )
    assert head, lines[0]
    training_id = head[1]
    assert "started" in lines
    # A line per progress event: the loss and learning rate come at most once a second (and at the last step);
    # checkpoints every step (a tenth of 4 steps, at least 1).
    step = r"step (\d)/4(  loss \d+\.\d{4}  lr \d\.\d\de-0\d)?(  eta \d+s)?(  checkpoint saved)?"
    steps = [m for m in (re.fullmatch(step, line) for line in lines) if m]
    numbers = [int(m[1]) for m in steps]  # progress events come at most once a second, and at every validation
    assert numbers == sorted(set(numbers)) and numbers[-1] == 4 and 2 in numbers, lines
    assert steps[-1][2] and not steps[-1][4]  # the last step has the loss; no checkpoint is kept for it
    # A validation round at steps 2 and 4, each with its image's URL, saved with --download.
    rounds = [i for i, line in enumerate(lines) if line.startswith("validation at step ")]
    assert [lines[i] for i in rounds] == ["validation at step 2: 1 image(s)", "validation at step 4: 1 image(s)"]
    for i in rounds:
        assert re.fullmatch(r"  'a photo of sks' \(seed 0\): http://\S+", lines[i + 1]), lines[i + 1]
    saved = sorted(downloads.iterdir())
    assert [p.name for p in saved] == [f"{training_id}_step000002_0.png", f"{training_id}_step000004_0.png"]
    for path in saved:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size == (64, 64)
    assert f"  saved {saved[0]}" in lines
    assert re.fullmatch(r"succeeded in \d+s: LoRA 'my-style', \d+ KiB, sha256 [0-9a-f]{12}", lines[-3]), lines[-3]
    assert lines[-2] == 'Use it with "loras": [{"name": "my-style"}] in an image job, e.g.:'
    command = lines[-1].strip()
    assert command == f"sdserve generate 'a photo of sks' --model demo --lora my-style --url {gateway}"

    training = client.get(f"/v1/trainings/{training_id}").json()
    assert training["status"] == "succeeded" and training["adapter"]["name"] == "my-style"
    assert training["request"]["hyperparameters"]["steps"] == 4
    assert [r["step"] for r in training["validation"]] == [2, 4]

    # The printed command runs as it is (a few steps fewer, to be quick) and applies the new LoRA.
    words = shlex.split(command)
    assert words[:2] == ["sdserve", "generate"]
    status, out, err = sdserve(capsys, *words[1:], "--steps", "4", "--out", str(tmp_path / "images"), "--quiet")
    assert status == 0, err
    (path,) = [Path(line) for line in out.splitlines()]
    job = client.get(f"/v1/jobs/{path.name.split('_')[0]}").json()
    assert job["status"] == "succeeded"
    assert [lora["name"] for lora in job["request"]["loras"]] == ["my-style"]


def test_a_folder_without_images_and_bad_arguments_are_refused_before_anything_is_sent(
    tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail differently
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "caption.txt").write_text("a photo of sks")
    (empty / "README.md").write_text("no images here")
    cases = [
        ([str(empty)], f"{empty} has no images (PNG, JPEG or WEBP files) to train on"),
        ([str(tmp_path / "missing")], f"no such folder: {tmp_path / 'missing'}"),
        ([str(folder), "--method", "textual_inversion"], "--method textual_inversion needs --initializer WORD"),
        ([str(folder), "--initializer", "cat"], "--initializer is for --method textual_inversion"),
        ([str(folder), "--validate-every", "2"], "--validate-every needs at least one --validate PROMPT"),
    ]
    for extra, message in cases:
        status, out, err = sdserve(capsys, "train", *extra, "--name", "x", "--trigger", "sks", "--url", nowhere)
        assert (status, out) == (2, ""), (extra, err)
        assert err.startswith(f"sdserve train: {message}"), err
    (folder / "orphan.txt").write_text("no image of this name")
    status, _, err = sdserve(capsys, "train", str(folder), "--name", "x", "--trigger", "sks", "--url", nowhere)
    assert status == 2 and "caption orphan.txt has no image of the same name" in err


def test_a_refused_training_prints_the_problem(gateway: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = sdserve(
        capsys, "train", str(folder), "--name", "x", "--trigger", "sks", "--method", "textual_inversion",
        "--initializer", "cat", "--url", gateway,
    )  # fmt: skip
    assert (status, out) == (2, "")
    assert err.startswith("sdserve train: The request is invalid (HTTP 422)"), err
    assert "<my-token>" in err  # why: an embedding's token is shaped like <this>
    status, out, err = sdserve(capsys, "train", str(folder), "--name", "x", "--trigger", "sks", "--url", nowhere())
    assert status == 1 and "sdserve train: cannot reach the gateway" in err


def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_no_follow_prints_the_id_and_a_training_canceled_meanwhile_exits_non_zero(
    gateway: str, client: httpx.Client, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No worker: the training waits in its queue."""
    status, out, err = sdserve(capsys, "train", str(folder), "--name", "a", "--trigger", "sks", "--no-follow",
                               "--url", gateway)  # fmt: skip
    assert status == 0, err
    assert re.fullmatch(ID, out.strip())
    assert client.get(f"/v1/trainings/{out.strip()}").json()["status"] == "queued"

    result: list[int] = []
    log = io.StringIO()
    args = parse(str(folder), "--name", "b", "--trigger", "sks", "--url", gateway)
    thread = threading.Thread(target=lambda: result.append(train.run(args, stdout=log, stderr=log)))
    thread.start()
    training = wait_for(lambda: [t for t in client.get("/v1/trainings").json()["data"] if t["name"] == "b"])[0]
    wait_for(lambda: "queued (position" in log.getvalue())
    assert client.post(f"/v1/trainings/{training['id']}/cancel").json()["status"] == "canceled"
    thread.join(30)
    assert result == [1]
    assert log.getvalue().splitlines()[-1].startswith(f"sdserve train: training {training['id']} canceled")


def parse(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="sdserve")
    train.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("flag", "stdin", "canceled"),
    [
        (["--cancel-on-interrupt"], io.StringIO(""), True),
        ([], Terminal("y\n"), True),
        ([], Terminal("\n"), False),
        ([], io.StringIO("y\n"), False),  # no terminal to ask on: the training goes on
    ],
)
def test_ctrl_c_asks_whether_to_cancel(
    gateway: str,
    client: httpx.Client,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: list[str],
    stdin: io.StringIO,
    canceled: bool,
) -> None:
    def interrupt(self: train.Follower, timeout: float | None) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(train.Follower, "follow", interrupt)
    out, err = io.StringIO(), io.StringIO()
    args = parse(str(folder), "--name", "c", "--trigger", "sks", "--url", gateway, *flag)
    assert train.run(args, stdout=out, stderr=err, stdin=stdin) == 130
    (training,) = client.get("/v1/trainings").json()["data"]
    assert training["status"] == ("canceled" if canceled else "queued")
    if canceled:
        assert err.getvalue() == f"sdserve train: interrupted; training {training['id']} canceled\n"
    else:
        assert f"stopped following; training {training['id']} goes on" in err.getvalue()
    assert ("Cancel training" in out.getvalue()) == isinstance(stdin, Terminal)


def test_follow_prints_each_event_and_resumes_after_the_last_one_it_got(tmp_path: Path) -> None:
    """A scripted stream that drops twice: the follower reconnects with `Last-Event-ID` each time, prints every
    event once, downloads the validation image and returns the training the terminal event carries."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(png, format="PNG")
    finished = {"id": "t-1", "status": "succeeded", "adapter": {"kind": "lora", "name": "s"}}
    image = {"prompt": "a sks", "seed": 5, "url": "/image.png"}

    def event(id_: str, name: str, data: dict[str, Any]) -> str:
        return f"id: {id_}\nevent: {name}\ndata: {json.dumps(data)}\n\n"

    answers = [
        ": ping\n\n" + event("1-0", "queued", {"queue_position": 2}) + event("2-0", "started", {}),
        event("3-0", "progress", {"step": 1, "total": 4, "loss": 0.5, "learning_rate": 1e-4})
        + event("4-0", "progress", {"step": 2, "total": 4, "checkpoint": {"step": 2, "key": "k"}}),
        event("5-0", "progress", {"step": 3, "total": 4, "loss": 0.25, "learning_rate": 5e-5})
        + event("6-0", "progress", {"step": 4, "total": 4, "validation": {"step": 4, "images": [image]}})
        + event("7-0", "succeeded", {"training": finished}),
    ]
    times = iter([0.0, 10.0, 20.0, 40.0, 50.0])  # started at 0 s, then steps 1-4 at 10, 20, 40 and 50 s
    out = io.StringIO()
    with ScriptedEvents(answers) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        follower = train.Follower(http, out, download=tmp_path, training_id="t-1", clock=lambda: next(times))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(http, "get", lambda url: httpx.Response(200, content=png.getvalue()))
            assert follower.follow(timeout=30) == finished
    assert server.last_event_ids == [None, "2-0", "4-0"]
    assert out.getvalue().splitlines() == [
        "queued (position 2)",
        "started",
        "step 1/4  loss 0.5000  lr 1.00e-04  eta 30s",
        "step 2/4  eta 20s  checkpoint saved",
        "step 3/4  loss 0.2500  lr 5.00e-05  eta 13s",
        "step 4/4",
        "validation at step 4: 1 image(s)",
        "  'a sks' (seed 5): /image.png",
        f"  saved {tmp_path / 't-1_step000004_0.png'}",
    ]
    assert (tmp_path / "t-1_step000004_0.png").read_bytes() == png.getvalue()


def test_the_generate_line_of_an_embedding_writes_its_token() -> None:
    training = {
        "base_model": "demo",
        "name": "blob",
        "request": {"caption_template": "a drawing of [trigger]", "trigger_word": "<blob>"},
        "adapter": {"kind": "embedding", "name": "blob", "token": "<blob>"},
    }
    assert train.generate_command(training, None) == "sdserve generate 'a drawing of <blob>' --model demo"
    assert train.duration(59.6) == "1m00s" and train.duration(3725) == "1h02m" and train.duration(-1) == "0s"
