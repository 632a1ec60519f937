"""``sdserve generate``: submit a job from the terminal, follow it, save its images.

A plain client of the public HTTP API (httpx and httpx-sse): input images go through ``POST /v1/uploads``,
the job through ``POST /v1/<task>``; a progress bar follows the job's Server-Sent Events (resuming
with ``Last-Event-ID`` if the stream drops); the images are saved as ``<job id>_<index>_<seed>.<ext>``
and their paths printed, one per line, on stdout. Everything else goes to stderr.

Exit status: 0 succeeded; 1 the job failed or was canceled, or the gateway could not be reached or
answered an error; 2 the request was refused (4xx: the problem's title, detail and failing fields
are printed) or the arguments are wrong; 130 interrupted (the job is canceled first).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "SDSERVE_API_KEY"
TASKS = ("txt2img", "img2img", "inpaint", "outpaint")
TERMINAL = ("succeeded", "failed", "canceled")
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
RECONNECTS = 10
BAR_WIDTH = 30


class CliError(Exception):
    """A failure to report to the user, with the exit status it deserves."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``generate`` to an ``argparse`` subparsers object; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="Submit a job to a running gateway, show its progress and save its images.",
        description="Submit a job to a running sdserve gateway, follow its progress and save the images "
        "(named <job id>_<index>_<seed>.<ext>); their paths are printed on stdout.",
    )
    parser.add_argument("prompt", help="What to draw.")
    parser.add_argument("--task", choices=TASKS, default="txt2img", help="Default: txt2img.")
    parser.add_argument("--image", type=Path, help="Input image (img2img, inpaint, outpaint): PNG, JPEG or WEBP.")
    parser.add_argument(
        "--mask", type=Path, help="Inpaint mask, the image's size: white is repainted. Without it, inpaint "
        "repaints the image's transparent part.",
    )  # fmt: skip
    parser.add_argument("--negative-prompt", help="What to steer away from.")
    parser.add_argument("--model", help="Model name (GET /v1/models); default: the service's default.")
    parser.add_argument("--width", type=int, help="Width in pixels, a multiple of 8.")
    parser.add_argument("--height", type=int, help="Height in pixels, a multiple of 8.")
    parser.add_argument("--steps", type=int, help="Denoising steps.")
    parser.add_argument("--guidance", type=float, dest="guidance_scale", help="Classifier-free guidance scale.")
    parser.add_argument("--scheduler", help="Sampler name (GET /v1/schedulers).")
    parser.add_argument("--seed", type=int, help="Seed of the first image (image i uses seed + i).")
    parser.add_argument("--num-images", type=int, help="How many images (1-8).")
    parser.add_argument("--style", help="Style preset (GET /v1/styles).")
    parser.add_argument(
        "--lora",
        action="append",
        type=lora_ref,
        dest="loras",
        metavar="NAME[:SCALE]",
        help="Apply a LoRA (GET /v1/loras), at its default scale or SCALE (-2 to 2); repeat for several.",
    )
    parser.add_argument("--strength", type=float, help="img2img/inpaint/outpaint: how far to depart from the image.")
    for side in ("left", "right", "top", "bottom"):
        parser.add_argument(f"--{side}", type=int, help=f"outpaint: pixels to add on the {side}.")
    parser.add_argument(
        "--url",
        default=None,
        help="Gateway base URL (default: SDSERVE_PUBLIC_URL, else the SDSERVE_HOST and SDSERVE_PORT the gateway of "
        f"these settings listens on; {DEFAULT_URL} when none is set).",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"API key, sent as a bearer token (default: ${API_KEY_ENV}).",
    )
    parser.add_argument("--out", type=Path, default=Path(), help="Folder for the images (default: here).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up following the job after this many s.")
    parser.add_argument("--quiet", action="store_true", help="No progress bar; print only the image paths.")
    parser.set_defaults(handler=run)
    return parser


# --- request ---------------------------------------------------------------------------------------
def lora_ref(text: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:SCALE`` as an item of the request's ``loras``."""
    name, colon, scale = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:SCALE, got {text!r}")
    if not colon:
        return {"name": name}
    try:
        return {"name": name, "scale": float(scale)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"the scale of {text!r} is not a number") from None


_PASSED_THROUGH = (
    "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "scheduler", "seed",
    "num_images", "style", "strength", "left", "right", "top", "bottom",
)  # fmt: skip


def build_body(args: argparse.Namespace, image: str | None, mask: str | None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/<task>``: only what was asked for, the gateway fills in the rest."""
    body: dict[str, Any] = {"prompt": args.prompt}
    for name in _PASSED_THROUGH:
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if getattr(args, "loras", None):
        body["loras"] = args.loras
    if image is not None:
        body["image"] = image
    if mask is not None:
        body["mask"] = mask
    elif args.task == "inpaint":
        body["mask_source"] = "alpha"
    return body


def check_args(args: argparse.Namespace) -> None:
    if args.task == "txt2img" and (args.image or args.mask):
        raise CliError("--image and --mask need --task img2img, inpaint or outpaint", 2)
    if args.task != "txt2img" and args.image is None:
        raise CliError(f"--task {args.task} needs --image", 2)
    if args.mask is not None and args.task != "inpaint":
        raise CliError("--mask is for --task inpaint", 2)
    for path in (args.image, args.mask):
        if path is not None and not path.is_file():
            raise CliError(f"no such file: {path}", 2)


# --- HTTP ------------------------------------------------------------------------------------------
def describe_problem(response: httpx.Response) -> str:
    """A readable account of an error answer (problem+json if it is one)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:300]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")
    lines = [f"{problem.get('title') or 'Error'} (HTTP {response.status_code})"]
    errors = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
    if problem.get("detail") and not errors:  # with failing fields, the detail only sums them up
        lines[0] += f": {problem['detail']}"
    lines += [f"  {error.get('field', '?')}: {error.get('message', '')}" for error in errors]
    if problem.get("request_id"):
        lines.append(f"  request id: {problem['request_id']}")
    return "\n".join(lines)


def expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The JSON body of an expected answer; a CliError describing anything else."""
    if response.status_code not in statuses:
        code = 2 if 400 <= response.status_code < 500 else 1
        raise CliError(describe_problem(response), code)
    data = response.json()
    if not isinstance(data, dict):
        raise CliError(f"unexpected answer from {response.request.url}")
    return data


def upload(http: httpx.Client, path: Path, kind: str) -> str:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    with path.open("rb") as handle:
        answer = http.post("/v1/uploads", files={"file": (path.name, handle, content_type)}, data={"kind": kind})
    return str(expect(answer, 201)["id"])


# --- progress --------------------------------------------------------------------------------------
class ProgressBar:
    """One line on stderr: redrawn in place on a terminal; elsewhere, a new line whenever it changes."""

    def __init__(self, stream: IO[str], enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.step = 0
        self.total = 0
        self.last = ""

    def show(self, status: str, step: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        self.step = self.step if step is None else step
        self.total = self.total if total is None else total
        fraction = self.step / self.total if self.total else 0.0
        filled = round(fraction * BAR_WIDTH)
        counts = f" {self.step}/{self.total}" if self.total else ""
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}{counts} {status}"
        if line == self.last:
            return
        # Away from a terminal, only a new status or another filled cell is worth a line.
        if not self.tty and self.last and status in self.last and line[: BAR_WIDTH + 2] == self.last[: BAR_WIDTH + 2]:
            return
        self.stream.write("\r\x1b[2K" + line if self.tty else line + "\n")
        self.stream.flush()
        self.last = line

    def done(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = ""


def event_data(event: ServerSentEvent) -> dict[str, Any]:
    """An event's JSON data (an object), or an empty one."""
    try:
        data = json.loads(event.data) if event.data else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def events(http: httpx.Client, path: str, what: str, timeout: float | None = None) -> Iterator[ServerSentEvent]:
    """The events of an SSE stream (``path``) up to its terminal event; a stream that drops is resumed with
    ``Last-Event-ID`` (so no event is missed or repeated). ``what`` names the job in messages."""
    last_id: str | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(http, "GET", path, headers=headers) as source:
                response = source.response
                if response.status_code != 200:
                    response.read()
                    expect(response, 200)
                for event in source.iter_sse():
                    last_id = event.id or last_id
                    failures = 0
                    yield event
                    if event.event in TERMINAL:
                        return
                    if deadline is not None and time.monotonic() > deadline:
                        raise CliError(f"gave up after {timeout:g} s; the {what} goes on")
        except httpx.TransportError as exc:
            failures += 1
            if failures > RECONNECTS:
                raise CliError(f"lost the event stream of {what}: {exc}") from exc
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"gave up after {timeout:g} s; the {what} goes on")
        time.sleep(min(0.2 * 2**failures, 5.0))  # the stream ended early: resume after the last event


def follow(http: httpx.Client, job: dict[str, Any], bar: ProgressBar, timeout: float) -> dict[str, Any]:
    """Follow the job's event stream to its terminal event; returns the finished job."""
    job_id = job["id"]
    for event in events(http, f"/v1/jobs/{job_id}/events", f"job {job_id}", timeout):
        data = event_data(event)
        if event.event == "queued":
            position = data.get("queue_position")
            bar.show("queued" + (f" (position {position})" if position is not None else ""))
        elif event.event == "started":
            bar.show("running")
        elif event.event == "progress":
            bar.show("running", int(data.get("step", 0)), int(data.get("total", 0)))
        elif event.event in TERMINAL:
            finished = data.get("job")
            if isinstance(finished, dict):
                return finished
            break
    return expect(http.get(f"/v1/jobs/{job_id}"), 200)


def save_images(http: httpx.Client, job: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for image in job.get("images", []):
        answer = http.get(image["url"])
        if answer.status_code != 200:
            raise CliError(f"could not download image {image['index']}: {describe_problem(answer)}")
        extension = EXTENSIONS.get(image.get("content_type", ""), "png")
        path = out / f"{job['id']}_{image['index']}_{image['seed']}.{extension}"
        path.write_bytes(answer.content)
        paths.append(path)
    return paths


# --- the command -------------------------------------------------------------------------------------
def default_url(settings: Any = None) -> str:
    """Where the gateway of these settings is reached (``SDSERVE_PUBLIC_URL``, else its host and port)."""
    if settings is None:
        return DEFAULT_URL
    return str(settings.public_base_url())


def run(
    args: argparse.Namespace, settings: Any = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Run ``sdserve generate`` with parsed arguments; returns the exit status.

    ``settings`` (``sdserve.settings.Settings``) give the gateway's address when ``--url`` is not given.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    headers = {"User-Agent": "sdserve-generate"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    bar = ProgressBar(err, enabled=not args.quiet)
    job_id: str | None = None
    base_url = str(args.url or default_url(settings)).rstrip("/")
    timeout = httpx.Timeout(30.0, read=60.0)
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as http:
        try:
            check_args(args)
            image = upload(http, args.image, "image") if args.image else None
            mask = upload(http, args.mask, "mask") if args.mask else None
            job = expect(http.post(f"/v1/{args.task}", json=build_body(args, image, mask)), 200, 202)
            job_id = str(job["id"])
            if not args.quiet:
                request = job.get("request", {})
                err.write(
                    f"job {job_id}: {args.task} on {request.get('model')}, {request.get('width')}×"
                    f"{request.get('height')}, {request.get('steps')} steps, seed {request.get('seed')}\n"
                )
            if job.get("status") not in TERMINAL:
                job = follow(http, job, bar, args.timeout)
            if job.get("status") != "succeeded":
                bar.show(str(job.get("status")))
                bar.done()
                error = job.get("error") or {}
                reason = ": ".join(str(p) for p in (error.get("title"), error.get("detail")) if p)
                raise CliError(f"job {job_id} {job.get('status')}" + (f": {reason}" if reason else ""))
            progress = job.get("progress") or {}
            bar.show("succeeded", progress.get("step"), progress.get("total"))
            bar.done()
            for path in save_images(http, job, args.out):
                out.write(f"{path}\n")
            out.flush()
        except CliError as exc:
            bar.done()
            err.write(f"sdserve generate: {exc}\n")
            return exc.status
        except httpx.TransportError as exc:
            bar.done()
            err.write(f"sdserve generate: cannot reach the gateway at {base_url}: {exc}\n")
            return 1
        except KeyboardInterrupt:
            bar.done()
            if job_id is not None:
                try:
                    http.post(f"/v1/jobs/{job_id}/cancel", timeout=5)
                    err.write(f"sdserve generate: interrupted; job {job_id} canceled\n")
                except httpx.HTTPError:
                    err.write(f"sdserve generate: interrupted; job {job_id} may still run\n")
            return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sdserve.generate PROMPT [options]``: the same command without the `sdserve` front."""
    parser = argparse.ArgumentParser(prog="sdserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    from sdserve.settings import Settings

    return run(parser.parse_args(["generate", *(sys.argv[1:] if argv is None else argv)]), Settings())


if __name__ == "__main__":
    sys.exit(main())
