"""`sdserve up`: the whole service on one machine, for trying it and for development.

Starts a local ``redis-server`` when none answers at the configured URL, then one worker, the webhook
dispatcher and the gateway as child processes, waits until they are ready, prints where to reach them, and
on Ctrl-C (or SIGTERM) stops everything it started: the worker finishes its current job first. A worker or
dispatcher that exits (an admin drain through the API does that to a worker) is started again, with a
backoff that grows while it keeps exiting, and says so; the gateway or Redis exiting stops everything.

Children run in their own sessions (a terminal's Ctrl-C reaches only this process, which then
signals each child exactly once) and, on Linux, die with this process if it is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from sdserve.jobs.presence import live_workers
from sdserve.keys import Keys
from sdserve.settings import Settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
STOP_GRACE_SECONDS = 60
RESTARTED = ("worker", "webhooks")
"""Children started again when they exit; the others (the gateway, Redis) stop everything."""
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before restarting a child that keeps exiting (the last one repeats)."""
STEADY_SECONDS = 60.0
"""A child that ran this long counts as healthy again: its next restart waits the shortest pause."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def say(message: str) -> None:
    print(f"sdserve: {message}", flush=True)


class Launcher:
    """Start, watch and stop the processes of a one-machine sdserve."""

    def __init__(self, settings: Settings, overrides: dict[str, Any]) -> None:
        self.settings = settings
        self.overrides = overrides
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.argv: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self.restarts: dict[str, int] = {}
        self.started_at: dict[str, float] = {}
        self.redis_url = settings.redis_url
        self._stopping = False

    # --- redis ----------------------------------------------------------------------------
    def _redis_answers(self, url: str) -> bool:
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def ensure_redis(self) -> bool:
        """Use the Redis at the configured URL, or start a local one; False if neither works."""
        if self._redis_answers(self.redis_url):
            say(f"using Redis at {self.redis_url}")
            return True
        parts = urlsplit(self.redis_url)
        if self.settings.start_redis == "never" or parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS:
            say(
                f"Redis does not answer at {self.redis_url}. Start it, or point SDSERVE_REDIS_URL at one "
                "(sdserve starts a local redis-server by itself only for a local redis:// URL)."
            )
            return False
        binary = shutil.which("redis-server")
        if binary is None:
            say(
                f"Redis does not answer at {self.redis_url} and `redis-server` is not installed.\n"
                "  Install it (Debian/Ubuntu: `sudo apt install redis-server`; macOS: `brew install redis`;\n"
                "  or `docker run -p 6379:6379 redis:7`), or set SDSERVE_REDIS_URL to a running Redis."
            )
            return False
        port = parts.port or 6379
        folder = (self.settings.data_dir / "redis").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._spawn("redis", argv)
        self.redis_url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._redis_answers(self.redis_url):
                say(f"started redis-server on 127.0.0.1:{port} (append-only files in {folder})")
                return True
            if self._exited("redis"):
                break
            time.sleep(0.1)
        say(f"redis-server did not start; see {folder / 'redis.log'}")
        return False

    # --- children -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 - setsid + pdeathsig
        self.children = [(n, p) for n, p in self.children if n != name] + [(name, proc)]
        self.argv[name] = (argv, env)
        self.started_at[name] = time.monotonic()

    def _restart(self, name: str, code: int | None) -> None:
        """Start an exited child again after a pause that grows while it keeps exiting."""
        if time.monotonic() - self.started_at.get(name, 0.0) > STEADY_SECONDS:
            self.restarts[name] = 0
        count = self.restarts.get(name, 0)
        pause = BACKOFF_SECONDS[min(count, len(BACKOFF_SECONDS) - 1)]
        self.restarts[name] = count + 1
        say(f"the {name} exited (code {code}); starting it again in {pause:g}s (restart {count + 1})")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(0.1)
        if not self._stopping:
            argv, env = self.argv[name]
            self._spawn(name, argv, env)

    def _exited(self, name: str) -> bool:
        return any(n == name and p.poll() is not None for n, p in self.children)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SDSERVE_REDIS_URL"] = self.redis_url
        env["SDSERVE_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["SDSERVE_HOST"] = self.settings.host
        env["SDSERVE_PORT"] = str(self.settings.port)
        env["SDSERVE_WORKER_MODELS"] = ",".join(self.settings.worker_models)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _wait_ready(self, timeout: float) -> bool:
        base = f"http://{self._display_host()}:{self.settings.port}"
        keys = Keys(self.settings.key_prefix)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        deadline = time.monotonic() + timeout
        gateway_ok = worker_ok = False
        try:
            while time.monotonic() < deadline and not self._stopping:
                for name, proc in self.children:
                    if proc.poll() is not None:
                        say(f"the {name} exited during start-up (code {proc.returncode})")
                        return False
                if not gateway_ok:
                    with contextlib.suppress(httpx.HTTPError):
                        gateway_ok = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                if not worker_ok:
                    worker_ok = any(w.ready for w in live_workers(client, keys).values())
                if gateway_ok and worker_ok:
                    return True
                time.sleep(0.25)
        finally:
            client.close()
        return False

    def _display_host(self) -> str:
        host = self.settings.host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - display only

    def stop(self) -> None:
        """Stop children in reverse start order: gateway, dispatcher, worker (finishes its job), then Redis."""
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    say(f"the {name} did not stop in {STOP_GRACE_SECONDS}s; killing it")
                    proc.kill()
                    proc.wait()
        self.children.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            self._stopping = True
            say("stopping (the worker finishes its current job first)...")

    # --- the whole run --------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.ensure_redis():
                return 1
            env = self._child_env()
            cli = [sys.executable, "-m", "sdserve.cli"]
            self._spawn("worker", [*cli, "worker"], env)
            self._spawn("webhooks", [*cli, "webhooks"], env)
            self._spawn("gateway", [*cli, "gateway"], env)
            say("starting the gateway and a worker (the first start generates the built-in model)...")
            if not self._wait_ready(timeout=300):
                if not self._stopping:
                    say("start-up failed; stopping")
                return 0 if self._stopping else 1
            self._banner()
            while not self._stopping:
                for name, proc in list(self.children):
                    if proc.poll() is None:
                        continue
                    if name not in RESTARTED:
                        say(f"the {name} exited unexpectedly (code {proc.returncode}); stopping everything")
                        return 1
                    self._restart(name, proc.returncode)
                time.sleep(0.5)
            return 0
        finally:
            self.stop()
            say("stopped")

    def _banner(self) -> None:
        base = f"http://{self._display_host()}:{self.settings.port}"
        data = Path(self.settings.data_dir).resolve()
        # The demo model knows scenes of coloured shapes; any other, ask for anything.
        demo = self.settings.default_model == "demo"
        prompt = "a red circle on a blue background" if demo else "a lighthouse at dusk"
        body = f'{{"prompt": "{prompt}", "width": 256, "height": 256, "steps": 20}}'
        say(
            f"ready.\n\n"
            f"  API        {base}  (OpenAPI docs: {base}/docs)\n"
            f"  models     {', '.join(self.settings.worker_models)}\n"
            f"  data       {data}\n\n"
            f"  Try it:\n"
            f"    curl -s -X POST {base}/v1/txt2img -d '{body}'\n"
            f"    curl -s {base}/v1/jobs/<id from the answer>\n\n"
            f"  Ctrl-C stops everything.\n"
        )
