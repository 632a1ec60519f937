"""``sdserve train``: train a LoRA or a textual-inversion embedding on a folder of images, and follow it.

A plain client of the public HTTP API, like ``sdserve generate``: the folder's images and their same-name
``.txt`` captions go as the ``files`` parts of one multipart ``POST /v1/trainings`` (beside a ``request`` part,
the JSON of the training); the training's Server-Sent Events are followed live (a line per progress event with
the loss, the learning rate and an ETA, a line per validation round with its image URLs, resuming with
``Last-Event-ID`` if the stream drops); at the end, a ready ``sdserve generate`` command line that uses the
result. Everything goes to stdout but the problems, which go to stderr.

Exit status: 0 succeeded (or queued, with ``--no-follow``); 1 the training failed or was canceled, or the
gateway could not be reached or answered an error; 2 the request was refused (4xx: the problem's title, detail
and failing fields are printed) or the arguments or the folder are wrong; 130 interrupted (Ctrl-C: asked
whether to cancel the training, or canceled at once with ``--cancel-on-interrupt``).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from sdserve.cli.generate import (
    API_KEY_ENV,
    DEFAULT_URL,
    TERMINAL,
    CliError,
    default_url,
    describe_problem,
    event_data,
    events,
    expect,
)
from sdserve.trainings.requests import MAX_DATASET_IMAGES, MAX_VALIDATION_PROMPTS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METHODS = ("lora", "textual_inversion")
INTERRUPTED = 130


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to an ``argparse`` subparsers object; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="Train a LoRA or a textual-inversion embedding on a folder of images, and follow it.",
        description="Send a folder's images (PNG, JPEG, WEBP; each with an optional same-name .txt caption) to a "
        "running sdserve gateway as a training, follow its progress, loss and validation images live, and print "
        "how to generate with the result.",
    )
    parser.add_argument("folder", type=Path, help="Folder of images and same-name .txt captions (not its subfolders).")
    parser.add_argument("--name", required=True, metavar="NAME", help="Name of the result: the LoRA's name in `loras`.")
    parser.add_argument(
        "--trigger",
        required=True,
        metavar="WORD",
        help="The trigger word of a LoRA (e.g. sks), or the new token of an embedding (e.g. '<my-token>').",
    )
    parser.add_argument("--method", choices=METHODS, default="lora", help="Default: lora.")
    parser.add_argument(
        "--initializer",
        metavar="WORD",
        help="textual_inversion: a word whose embedding the new token starts from (e.g. cat).",
    )
    parser.add_argument("--model", help="Base model (GET /v1/models); default: the service's default model.")
    parser.add_argument(
        "--caption-template", metavar="TEXT", help="Caption of images without a .txt (default: 'a photo of [trigger]')."
    )
    parser.add_argument(
        "--steps", type=int, metavar="N", help="Optimisation steps (default: the method's and model's)."
    )
    parser.add_argument("--rank", type=int, metavar="R", help="LoRA rank.")
    parser.add_argument("--lr", type=float, dest="learning_rate", metavar="X", help="Peak learning rate.")
    parser.add_argument("--batch-size", type=int, metavar="N", help="Images per step.")
    parser.add_argument("--resolution", type=int, metavar="PX", help="Training side in pixels (default: the model's).")
    parser.add_argument("--seed", type=int, metavar="N", help="Seed of the whole run (default: random).")
    parser.add_argument(
        "--validate",
        action="append",
        metavar="PROMPT",
        help=f"A validation prompt, rendered at the end and every --validate-every steps (up to "
        f"{MAX_VALIDATION_PROMPTS}; repeat the option).",
    )
    parser.add_argument(
        "--validate-every", type=int, metavar="N", help="Steps between validation rounds (default: at the end)."
    )
    parser.add_argument("--download", type=Path, metavar="DIR", help="Save the validation images in this folder.")
    parser.add_argument(
        "--url",
        default=None,
        help="Gateway base URL (default: SDSERVE_PUBLIC_URL, else the SDSERVE_HOST and SDSERVE_PORT the gateway of "
        f"these settings listens on; {DEFAULT_URL} when none is set).",
    )
    parser.add_argument(
        "--api-key",
        "--key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV),
        help=f"API key, sent as a bearer token (default: ${API_KEY_ENV}).",
    )
    parser.add_argument("--no-follow", action="store_true", help="Print the training's id and exit (it goes on).")
    parser.add_argument(
        "--cancel-on-interrupt", action="store_true", help="On Ctrl-C, cancel the training without asking."
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="Give up following after this many seconds (default: never)."
    )
    parser.set_defaults(handler=run)
    return parser


# --- the dataset and the request ---------------------------------------------------------------------
def collect(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder's images and the captions that belong to them (same name, ``.txt``), sorted by name.

    Hidden files and subfolders are left out; a caption without an image, or a folder without an image,
    is refused here, before anything is sent."""
    if not folder.is_dir():
        raise CliError(f"no such folder: {folder}", 2)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise CliError(f"{folder} has no images (PNG, JPEG or WEBP files) to train on", 2)
    if len(images) > MAX_DATASET_IMAGES:
        raise CliError(f"{folder} has {len(images)} images; a training takes at most {MAX_DATASET_IMAGES}", 2)
    stems = {p.stem for p in images}
    captions = [p for p in files if p.suffix.lower() == ".txt"]
    orphans = [p.name for p in captions if p.stem not in stems]
    if orphans:
        raise CliError(f"caption {orphans[0]} has no image of the same name in {folder}", 2)
    return images, captions


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``request`` part: only what was asked for, the gateway fills in the rest."""
    if args.method == "textual_inversion" and not args.initializer:
        raise CliError("--method textual_inversion needs --initializer WORD (a word close to the concept)", 2)
    if args.method == "lora" and args.initializer:
        raise CliError("--initializer is for --method textual_inversion", 2)
    if args.validate_every is not None and not args.validate:
        raise CliError("--validate-every needs at least one --validate PROMPT", 2)
    body: dict[str, Any] = {"method": args.method, "name": args.name, "trigger_word": args.trigger}
    if args.model:
        body["base_model"] = args.model
    if args.initializer:
        body["initializer_token"] = args.initializer
    if args.caption_template:
        body["caption_template"] = args.caption_template
    hp = {
        name: getattr(args, name)
        for name in ("steps", "rank", "learning_rate", "batch_size", "resolution", "seed")
        if getattr(args, name) is not None
    }
    if hp:
        body["hyperparameters"] = hp
    if args.validate:
        body["validation"] = {"prompts": args.validate}
        if args.validate_every is not None:
            body["validation"]["every"] = args.validate_every
    return body


def submit(http: httpx.Client, request: dict[str, Any], images: list[Path], captions: list[Path]) -> dict[str, Any]:
    """One multipart ``POST /v1/trainings``: the ``request`` part, then every file as a ``files`` part."""
    parts: list[tuple[str, tuple[str | None, bytes, str]]] = [
        ("request", (None, json.dumps(request).encode(), "application/json"))
    ]
    for path in [*images, *captions]:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(("files", (path.name, path.read_bytes(), content_type)))
    return expect(http.post("/v1/trainings", files=parts), 200, 202)


# --- following it ------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Follower:
    """Prints a training's events as lines, and keeps what it needs for an ETA and the downloads."""

    http: httpx.Client
    out: IO[str]
    download: Path | None = None
    training_id: str = ""
    clock: Callable[[], float] = time.monotonic
    start: tuple[float, int] | None = None  # (when, step) the ETA counts from
    saved: list[Path] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def eta(self, step: int, total: int) -> str | None:
        now = self.clock()
        if self.start is None or step <= self.start[1]:
            if self.start is None:
                self.start = (now, step)
            return None
        rate = (step - self.start[1]) / max(now - self.start[0], 1e-6)
        return duration((total - step) / rate)

    def on_progress(self, data: dict[str, Any]) -> None:
        """A line per progress event: the step, the loss and learning rate (when it has them), the ETA, and
        whether a checkpoint was saved; then its validation images, if any."""
        step, total = int(data.get("step", 0)), int(data.get("total", 0))
        if data.get("resumed_from_step") is not None:
            self.line(f"resumed from the checkpoint of step {data['resumed_from_step']}")
            self.start = (self.clock(), step)
        parts = [f"step {step}/{total}"]
        if data.get("loss") is not None:
            parts.append(f"loss {float(data['loss']):.4f}")
        if data.get("learning_rate") is not None:
            parts.append(f"lr {float(data['learning_rate']):.2e}")
        eta = self.eta(step, total)
        if eta is not None and step < total:
            parts.append(f"eta {eta}")
        if isinstance(data.get("checkpoint"), dict):
            parts.append("checkpoint saved")
        self.line("  ".join(parts))
        validation = data.get("validation")
        if isinstance(validation, dict):
            self.on_validation(validation)

    def on_validation(self, validation: dict[str, Any]) -> None:
        step = validation.get("step")
        images = [i for i in validation.get("images") or [] if isinstance(i, dict)]
        self.line(f"validation at step {step}: {len(images)} image(s)")
        for index, image in enumerate(images):
            self.line(f"  {image.get('prompt')!r} (seed {image.get('seed')}): {image.get('url')}")
            if self.download is not None and image.get("url"):
                path = self.download / f"{self.training_id}_step{int(step or 0):06d}_{index}.png"
                answer = self.http.get(str(image["url"]))
                if answer.status_code != 200:
                    raise CliError(f"could not download a validation image: {describe_problem(answer)}")
                self.download.mkdir(parents=True, exist_ok=True)
                path.write_bytes(answer.content)
                self.saved.append(path)
                self.line(f"  saved {path}")

    def follow(self, timeout: float | None) -> dict[str, Any]:
        """Print every event of the training up to the terminal one; returns the ended training."""
        path = f"/v1/trainings/{self.training_id}"
        for event in events(self.http, f"{path}/events", f"training {self.training_id}", timeout):
            data = event_data(event)
            if event.event == "queued":
                position = data.get("queue_position")
                self.line("queued" + (f" (position {position})" if position is not None else ""))
            elif event.event == "started":
                self.line("started")
                self.start = (self.clock(), 0)
            elif event.event == "progress":
                self.on_progress(data)
            elif event.event in TERMINAL:
                ended = data.get("training")
                if isinstance(ended, dict):
                    return ended
                break
        return expect(self.http.get(path), 200)


# --- the result --------------------------------------------------------------------------------------
def generate_command(training: dict[str, Any], url: str | None) -> str:
    """A ``sdserve generate`` command line that uses what the training made."""
    request = training.get("request") or {}
    adapter = training.get("adapter") or {}
    template = str(request.get("caption_template") or "a photo of [trigger]")
    word = str(adapter.get("token") or request.get("trigger_word") or "")
    words = ["sdserve", "generate", template.replace("[trigger]", word), "--model", str(training.get("base_model"))]
    if adapter.get("kind", "lora") == "lora":
        words += ["--lora", str(adapter.get("name") or training.get("name"))]
    if url:
        words += ["--url", url]
    return shlex.join(words)


def report_success(out: IO[str], training: dict[str, Any], url: str | None) -> None:
    adapter = training.get("adapter") or {}
    progress = training.get("progress") or {}
    took = progress.get("elapsed_seconds")
    name, token = adapter.get("name"), adapter.get("token")
    summary = "succeeded" + (f" in {duration(float(took))}" if took is not None else "")
    summary += f": {'an embedding' if token else 'LoRA'} {name!r}" + (f" (token {token})" if token else "")
    summary += f", {int(adapter.get('bytes') or 0) / 1024:.0f} KiB, sha256 {str(adapter.get('sha256', ''))[:12]}"
    out.write(summary + "\n")
    if adapter.get("kind") == "embedding":
        out.write(f"Write {token} in a prompt of {training.get('base_model')} to use it, e.g.:\n")
    else:
        out.write(f'Use it with "loras": [{{"name": "{name}"}}] in an image job, e.g.:\n')
    out.write(f"  {generate_command(training, url)}\n")
    out.flush()


def failure(training: dict[str, Any]) -> CliError:
    error = training.get("error") or {}
    reason = ": ".join(str(p) for p in (error.get("title"), error.get("detail")) if p)
    return CliError(f"training {training.get('id')} {training.get('status')}" + (f": {reason}" if reason else ""))


# --- the command -------------------------------------------------------------------------------------
def ask(question: str, stdin: IO[str], out: IO[str]) -> bool:
    """A yes/no question on the terminal; anything but y or yes (or no terminal at all) is no."""
    if not stdin.isatty():
        return False
    out.write(question)
    out.flush()
    try:
        return stdin.readline().strip().lower() in ("y", "yes")
    except (KeyboardInterrupt, EOFError):
        out.write("\n")
        return False


def interrupted(
    http: httpx.Client, training_id: str, args: argparse.Namespace, stdin: IO[str], out: IO[str], err: IO[str]
) -> int:
    """Ctrl-C while following: cancel the training if asked to (or told to by ``--cancel-on-interrupt``)."""
    out.write("\n")
    if args.cancel_on_interrupt or ask(f"Cancel training {training_id}? [y/N] ", stdin, out):
        try:
            answer = http.post(f"/v1/trainings/{training_id}/cancel", timeout=5)
            expect(answer, 200, 202)
            err.write(f"sdserve train: interrupted; training {training_id} canceled\n")
        except (httpx.HTTPError, CliError):
            err.write(f"sdserve train: interrupted; training {training_id} may still run\n")
    else:
        err.write(
            f"sdserve train: stopped following; training {training_id} goes on "
            f"(GET /v1/trainings/{training_id}, or POST /v1/trainings/{training_id}/cancel)\n"
        )
    return INTERRUPTED


def run(
    args: argparse.Namespace,
    settings: Any = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> int:
    """Run ``sdserve train`` with parsed arguments; returns the exit status.

    ``settings`` (``sdserve.settings.Settings``) give the gateway's address when ``--url`` is not given.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    headers = {"User-Agent": "sdserve-train"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    base_url = str(args.url or default_url(settings)).rstrip("/")
    training_id: str | None = None
    # A training's dataset can be large: a long write timeout for the upload; reads see the SSE keep-alives.
    timeout = httpx.Timeout(30.0, read=60.0, write=300.0)
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as http:
        try:
            images, captions = collect(args.folder)
            request = build_request(args)
            training = submit(http, request, images, captions)
            training_id = str(training["id"])
            if args.no_follow:
                out.write(f"{training_id}\n")
                out.flush()
                return 0
            resolved = training.get("request") or {}
            hp = resolved.get("hyperparameters") or {}
            out.write(
                f"training {training_id}: {training.get('method')} {training.get('name')!r} on "
                f"{training.get('base_model')}, {len(images)} images ({len(captions)} captioned), "
                f"{hp.get('steps')} steps, trigger {resolved.get('trigger_word')!r}\n"
            )
            out.flush()
            follower = Follower(http, out, download=args.download, training_id=training_id)
            if training.get("status") not in TERMINAL:
                training = follower.follow(args.timeout)
            if training.get("status") != "succeeded":
                raise failure(training)
            report_success(out, training, args.url and base_url)
        except CliError as exc:
            err.write(f"sdserve train: {exc}\n")
            return exc.status
        except httpx.TransportError as exc:
            err.write(f"sdserve train: cannot reach the gateway at {base_url}: {exc}\n")
            return 1
        except KeyboardInterrupt:
            if training_id is None:
                err.write("sdserve train: interrupted before the training was sent\n")
                return INTERRUPTED
            return interrupted(http, training_id, args, stdin or sys.stdin, out, err)
    return 0
