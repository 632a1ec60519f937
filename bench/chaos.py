"""Chaos run: jobs go in through a real gateway while workers are SIGKILLed or stalled, clocks disagree, Redis
restarts and runs out of memory (issues 7 and 15).

Everything runs as subprocesses on this machine, in a temporary folder:

- its own ``redis-server`` on a free port, ``--appendonly yes --appendfsync always`` (so a restart keeps
  every write it acknowledged), restarted once or twice with SIGTERM (a graceful shutdown) or, with
  ``--redis-signal kill``, SIGKILL;
- ``sdserve gateway`` (``SDSERVE_UNSERVED_MODELS=queue``), ``sdserve webhooks`` (it also runs the
  janitor every 10 s, so recovery does not depend on a live worker) and ``--workers`` ``sdserve worker``
  processes (tiny model, one torch thread, ``SDSERVE_HEARTBEAT_SECONDS=1``, ``SDSERVE_MAX_ATTEMPTS=3``),
  each restarted right after it is killed;
- a submitter that sends ``--jobs`` tiny txt2img jobs (64x64, 2-6 steps, 1-2 images) at a steady rate
  over ``--duration`` seconds. A submit that gets a 503 or no answer was not accepted: it is retried with
  the same ``Idempotency-Key``. Every 2xx goes into the ledger;
- a chaos loop that SIGKILLs a worker every few seconds (``--kill-every``), stalls a busy worker ``--stalls``
  times (SIGSTOP for ``--stall-seconds``, longer than its presence lives, so the janitor gives its job to
  another worker; then SIGCONT: the zombie must not touch the rerun), restarts Redis ``--redis-restarts``
  times (down ``--redis-down`` seconds each), and once fills Redis past its maxmemory for ``--oom-seconds``
  (noeviction: every write refused); with ``--skew S`` the dispatcher (and its janitor) runs with its wall
  clock S seconds ahead and the first worker S/2 behind; then a drain (no more chaos, a worker
  that died by itself is still restarted) until every accepted job has ended or ``--drain`` seconds have
  passed. Tiny jobs take a tenth of a second, so a blind pick mostly hits an idle worker: each kill waits
  up to ``--busy-wait`` seconds for a worker running a job and picks among those (the record's ``worker``
  field says which), else any worker. ``--targeted-kills N`` first kills N workers mid-job, whatever
  ``--kill-every`` says.

The ledger is then reconciled against Redis and the object store:

- **lost**: an accepted job with no record, or one that ended other than ``succeeded`` or ``failed``
  with ``/problems/worker-lost`` after using up its attempts;
- **duplicated**: a job with more than one terminal event in its stream, a succeeded job whose
  ``images`` are not exactly ``num_images`` distinct keys under the folder of its last run
  (``outputs/<job>/<attempt>/``), or whose run folder holds anything but those files and ``manifest.json``;
- **stuck**: a job still queued or running at the drain deadline;
- **missing files**: a succeeded job one of whose images or manifest is not in the store;
- **progress backwards**: within one run of a job (its events from its ``started``), a progress step that is
  not larger than the one before;
- **orphans** (reported, not a failure): jobs in Redis that no 2xx ever named, i.e. a submit whose
  answer was lost and whose retry created another job instead of replaying the first;
- **stray runs** (reported, not a failure): folders of a succeeded job's earlier runs, files a run that was
  SIGKILLed after writing them had no chance to delete (no result names them).

It also reports how long each job hit by a kill waited for the janitor's requeue, the time from submit
to the end (p50/p95), and workers that exited by themselves (restarted, and listed with their log tail).

    python bench/chaos.py [--jobs 200] [--duration 120] [--workers 3] [--kill-every 4,8] [--busy-wait 2]
                          [--redis-restarts 2] [--redis-down 2] [--redis-signal term|kill] [--fixed-names]
                          [--models-cache DIR] [--keep DIR] [--json FILE]

Workers are found by the pid this script spawned (RQ's worker hash records it), whatever name they take.
``--fixed-names`` restarts each worker under the same ``SDSERVE_WORKER_NAME``, as the Kubernetes manifest
does (the pod name) when a container is restarted in its pod. ``tests/chaos/test_chaos.py`` runs a short
version (``run`` with ``Options``). The machine is small and shared: the long run takes about two and a
half minutes of both cores. The exit status is 0 only when lost = duplicated = stuck = 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from sdserve.images.view import ImageJobResult
from sdserve.jobs.presence import WorkerPresence
from sdserve.jobs.record import from_hash
from sdserve.keys import Keys

SDSERVE = [sys.executable, "-m", "sdserve.cli"]
"""The `sdserve` command, run by this interpreter (whatever console scripts are installed)."""
SKEWED = """
import sys, time
real = time.time
time.time = lambda: real() + float(sys.argv[1])
from sdserve.cli.main import main
main(sys.argv[2:])
"""
"""The `sdserve` command with its process's wall clock moved by argv[1] seconds (an injected clock)."""


def sdserve(skew: float = 0.0) -> list[str]:
    """The command line of `sdserve` (with a skewed wall clock when ``skew`` is not 0)."""
    return [sys.executable, "-c", SKEWED, repr(skew)] if skew else list(SDSERVE)


TERMINAL = {"succeeded", "failed", "canceled"}
WORKER_LOST = "/problems/worker-lost"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Options:
    """What one chaos run does."""

    jobs: int = 200
    duration: float = 120.0
    """Seconds over which the jobs are submitted (and the chaos lasts)."""
    workers: int = 3
    kill_every: tuple[float, float] = (4.0, 8.0)
    """Seconds between two worker kills (uniform in this range); (0, 0) kills none at random."""
    targeted_kills: int = 0
    """Kills that wait for a worker running a job and kill that one (mid-job), before the random ones."""
    busy_wait: float = 2.0
    """At each random kill, wait up to this long for a worker running a job and pick among those (tiny jobs
    take a tenth of a second: a blind pick mostly hits an idle worker); else any worker."""
    redis_restarts: int = 2
    redis_signal: str = "term"
    """``term``: graceful shutdown (flushes the AOF); ``kill``: SIGKILL; ``mixed``: alternately, TERM first."""
    redis_down_seconds: float = 2.0
    stalls: int = 0
    """Busy workers stopped (SIGSTOP) for ``stall_seconds`` and resumed (SIGCONT)."""
    stall_seconds: float = 18.0
    """Longer than a presence lives (4 heartbeats + 10 s): the janitor gives the stalled worker's job away."""
    skew_seconds: float = 0.0
    """The dispatcher's wall clock runs this far ahead, the first worker's half as far behind."""
    oom_seconds: float = 0.0
    """One phase (mid-run) when Redis holds more than its maxmemory: every write refused."""
    drain_seconds: float = 240.0
    max_attempts: int = 3
    heartbeat_seconds: float = 1.0
    fixed_names: bool = False
    seed: int = 7
    models_cache: Path | None = None
    verbose: bool = True


@dataclass
class Accepted:
    index: int
    job_id: str
    at: float


@dataclass
class Report:
    """The reconciliation of one run."""

    options: Options
    accepted: int = 0
    unaccepted: int = 0
    """Submits that never got a 2xx before their retry deadline."""
    succeeded: int = 0
    failed_worker_lost: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    orphans: int = 0
    kills: int = 0
    kills_mid_job: int = 0
    stalls: int = 0
    stalled_jobs: list[str] = field(default_factory=list)
    """Jobs a stalled worker was running when it was stopped."""
    stalled_requeued: int = 0
    """Of those, the ones the janitor gave to another worker while the stalled one slept."""
    zombie_writes_refused: int = 0
    """Log lines of resumed workers finding their job superseded (their writes were refused)."""
    oom_phases: int = 0
    missing_files: int = 0
    progress_backwards: int = 0
    worker_crashes: int = 0
    """Workers that exited without being killed by the chaos loop (restarted, and listed in problems)."""
    redis_restarts: int = 0
    redis_signals: list[str] = field(default_factory=list)
    requeues: int = 0
    """``queued`` events with ``"reason": "worker-lost"`` in the ledger's job streams."""
    requeued_jobs: int = 0
    claimed_requeues: int = 0
    """Janitor log lines about jobs taken but never started (no event is written for those)."""
    stray_runs: int = 0
    """Folders of earlier runs of succeeded jobs (a killed run's files: no result names them)."""
    answers_503: int = 0
    answers_unreachable: int = 0
    answers_other: dict[int, int] = field(default_factory=dict)
    replays: int = 0
    """Retries answered ``Idempotent-Replayed: true``: an earlier attempt had created the job."""
    attempts_histogram: dict[int, int] = field(default_factory=dict)
    to_terminal: list[float] = field(default_factory=list)
    mid_job_victims: list[str] = field(default_factory=list)
    """Jobs whose record still named a worker as running them after it was killed."""
    victims_requeued: int = 0
    """Of those (each counted once), the ones the janitor put back in the queue after the kill (a ``queued``
    event with reason worker-lost)."""
    kill_to_requeue: list[float] = field(default_factory=list)
    """Seconds from each mid-job kill to the requeue event of the job it hit."""
    problems: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    drain_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.lost, self.duplicated, self.stuck, self.missing_files, self.progress_backwards) == (0, 0, 0, 0, 0)

    def table(self) -> str:
        o = self.options
        other = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers_other.items())) or "none"
        attempts = ", ".join(f"{k}: {v}" for k, v in sorted(self.attempts_histogram.items()))
        rows = [
            ("jobs submitted / accepted", f"{o.jobs} / {self.accepted}"),
            ("succeeded", self.succeeded),
            ("failed (worker-lost)", self.failed_worker_lost),
            ("**lost**", self.lost),
            ("**duplicated**", self.duplicated),
            ("**stuck**", self.stuck),
            ("**succeeded jobs with missing files**", self.missing_files),
            ("**progress that went backwards**", self.progress_backwards),
            ("orphans (jobs no 2xx named)", self.orphans),
            ("worker kills (SIGKILL) / of which mid-job", f"{self.kills} / {self.kills_mid_job}"),
            (
                "stalls (SIGSTOP / SIGCONT) / jobs stalled / of them rerun elsewhere",
                f"{self.stalls} / {len(set(self.stalled_jobs))} / {self.stalled_requeued}",
            ),
            ("zombie writes refused (resumed workers finding their job superseded)", self.zombie_writes_refused),
            (f"Redis out of memory ({o.oom_seconds:g} s each)", self.oom_phases),
            ("clock skew: dispatcher + / first worker − (s)", f"{o.skew_seconds:g} / {o.skew_seconds / 2:g}"),
            ("worker crashes (not killed by the run)", self.worker_crashes),
            (f"Redis restarts ({o.redis_signal})", f"{self.redis_restarts} ({', '.join(self.redis_signals)})"),
            ("requeues (worker-lost events) / jobs requeued", f"{self.requeues} / {self.requeued_jobs}"),
            ("jobs hit by a kill / of them requeued", f"{len(set(self.mid_job_victims))} / {self.victims_requeued}"),
            ("kill to requeue p50 / max (s)", self._spread(self.kill_to_requeue)),
            ("requeues of taken-but-never-started jobs", self.claimed_requeues),
            ("stray run folders (killed runs' files)", self.stray_runs),
            ("submit answers 503 / unreachable / other", f"{self.answers_503} / {self.answers_unreachable} / {other}"),
            ("retries replayed by Idempotency-Key", self.replays),
            ("runs per job (attempts: jobs)", attempts),
            ("time to terminal p50 / p95 / max (s)", self._latency()),
            ("wall time: submit+chaos / drain (s)", f"{self.wall_seconds:.0f} / {self.drain_seconds:.0f}"),
        ]
        lines = ["| what | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines)

    def _latency(self) -> str:
        if not self.to_terminal:
            return "n/a"
        t = self.to_terminal
        return f"{pct(t, 0.5):.1f} / {pct(t, 0.95):.1f} / {max(t):.1f}"

    @staticmethod
    def _spread(values: list[float]) -> str:
        return f"{pct(values, 0.5):.1f} / {max(values):.1f}" if values else "n/a"


class Cluster:
    """Redis, the gateway, the webhook dispatcher and the workers of one run, as subprocesses."""

    def __init__(self, folder: Path, options: Options, say: Callable[[str], None]) -> None:
        self.folder = folder
        self.options = options
        self.say = say
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}"
        self.keys = Keys(self.prefix)
        self.redis_port = free_port()
        self.port = free_port()
        self.data = folder / "data"
        self.logs = folder / "logs"
        self.redis_dir = folder / "redis"
        for path in (self.data, self.logs, self.redis_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.models_cache = options.models_cache or self.data / "models"
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.others: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.names: dict[int, str] = {}
        """pid -> the worker's name in Redis, once it has registered."""
        self.labels: dict[int, str] = {}
        """pid -> the label of the worker's log file."""
        self.generation = 0
        self.redis_restarts_done = 0
        self.client = redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=5, socket_connect_timeout=2)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    # --- plumbing -------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
        env |= {
            "SDSERVE_REDIS_URL": self.redis_url,
            "SDSERVE_KEY_PREFIX": self.prefix,
            "SDSERVE_DATA_DIR": str(self.data),
            "SDSERVE_MODELS_CACHE_DIR": str(self.models_cache),
            "SDSERVE_PORT": str(self.port),
            "SDSERVE_UNSERVED_MODELS": "queue",
            "SDSERVE_DEFAULT_MODEL": "tiny",
            "SDSERVE_LOG_LEVEL": "warning",
            "SDSERVE_MAX_ATTEMPTS": str(self.options.max_attempts),
            "SDSERVE_HEARTBEAT_SECONDS": str(self.options.heartbeat_seconds),
            "SDSERVE_WORKER_METRICS_PORT": "0",  # several workers on one machine: no metrics ports to fight over
            "SDSERVE_DISPATCHER_METRICS_PORT": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        return env | extra

    def spawn(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{label}.log").open("ab")
        try:
            # Own session (process group): a kill reaches the whole process, and Ctrl-C on the terminal
            # reaches only this script, which then stops everything itself.
            return subprocess.Popen(
                argv, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def retrying(self, call: Callable[[], T], seconds: float = 60.0) -> T:
        """A harness-side Redis call that rides out the restarts this run causes."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log_tail(self, label: str, chars: int = 1500) -> str:
        path = self.logs / f"{label}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- redis ----------------------------------------------------------------------------
    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on the PATH")
        argv = [
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.redis_dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str(self.logs / "redis-server.log"),
        ]  # fmt: skip
        self.redis_proc = self.spawn("redis", argv)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n" + self.log_tail("redis-server"))
            time.sleep(0.05)

    def redis_signal(self) -> signal.Signals:
        """The signal of the next restart."""
        choice = self.options.redis_signal
        if choice == "mixed":
            choice = ("term", "kill")[self.redis_restarts_done % 2]
        return signal.SIGKILL if choice == "kill" else signal.SIGTERM

    def restart_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.send_signal(self.redis_signal())
        self.redis_proc.wait(timeout=30)
        time.sleep(self.options.redis_down_seconds)
        self.start_redis()

    # --- sdserve processes ----------------------------------------------------------------
    def start_gateway(self) -> None:
        self.others["gateway"] = self.spawn("gateway", [*SDSERVE, "gateway"], self.env())
        self._wait_http("/readyz", "gateway")

    def start_dispatcher(self) -> None:
        self.others["webhooks"] = self.spawn("webhooks", [*sdserve(self.options.skew_seconds), "webhooks"], self.env())

    def _wait_http(self, path: str, label: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.others[label].poll() is not None:
                raise RuntimeError(f"the {label} exited:\n" + self.log_tail(label))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the {label} did not become ready:\n" + self.log_tail(label))

    def start_worker(self, slot: int) -> None:
        """Start the worker of a slot (named ``chaos-w<slot>`` with ``fixed_names``, else by sdserve)."""
        self.generation += 1
        extra = {
            "SDSERVE_WORKER_MODELS": "tiny",
            "SDSERVE_WARMUP": "false",
            "SDSERVE_TORCH_THREADS": "1",
            "SDSERVE_DEVICE": "cpu",
        }
        if self.options.fixed_names:
            extra["SDSERVE_WORKER_NAME"] = f"chaos-w{slot}"
        label = f"worker-{slot}-{self.generation}"
        skew = -self.options.skew_seconds / 2 if slot == 0 else 0.0
        proc = self.spawn(label, [*sdserve(skew), "worker"], self.env(**extra))
        self.workers[slot] = proc
        self.labels[proc.pid] = label

    def name_of(self, slot: int) -> str | None:
        """The name a slot's worker registered under (RQ's worker hash records its pid), None until it has."""
        proc = self.workers[slot]
        if proc.pid not in self.names:
            host = socket.gethostname().encode()
            for key in self.retrying(lambda: sorted(self.client.smembers("rq:workers"))):
                pid, hostname = self.retrying(lambda key=key: self.client.hmget(key, ["pid", "hostname"]))
                if pid == str(proc.pid).encode() and hostname == host:
                    self.names[proc.pid] = _text(key).removeprefix("rq:worker:")
                    break
        return self.names.get(proc.pid)

    def worker_ready(self, slot: int) -> bool:
        name = self.name_of(slot)
        if name is None or self.workers[slot].poll() is not None:
            return False
        raw = self.retrying(lambda: self.client.get(self.keys.worker(name)))
        return raw is not None and WorkerPresence.model_validate_json(raw).ready

    def wait_workers_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.worker_ready(slot) for slot in self.workers):
            for slot, proc in self.workers.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {slot} exited during start-up:\n" + self.worker_log(slot))
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not become ready")
            time.sleep(0.2)

    def worker_log(self, slot: int) -> str:
        return self.log_tail(self.labels.get(self.workers[slot].pid, ""))

    def stop_worker(self, slot: int, resume: bool) -> None:
        """SIGSTOP (or SIGCONT) a worker's whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers[slot].pid, signal.SIGCONT if resume else signal.SIGSTOP)

    def fill_redis(self, full: bool) -> None:
        """Put Redis over its maxmemory (noeviction: writes refused), or give it room again."""
        if full:
            used = int(self.retrying(lambda: self.client.info("memory"))["used_memory"])
            self.retrying(lambda: self.client.config_set("maxmemory", max(1, used - 1_000_000)))
        else:
            self.retrying(lambda: self.client.config_set("maxmemory", 0))

    def kill_worker(self, slot: int) -> None:
        proc = self.workers.pop(slot)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def slot_of(self, name: str) -> int | None:
        return next((slot for slot in self.workers if self.name_of(slot) == name), None)

    def close(self) -> None:
        procs = list(self.workers.values()) + list(self.others.values())
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.kill()
            self.redis_proc.wait()
        self.client.close()


class Submitter(threading.Thread):
    """Submit the jobs at a steady rate; retry a submit that was not accepted with the same key."""

    def __init__(self, base_url: str, options: Options, run_id: str, rng: random.Random) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.base_url = base_url
        self.options = options
        self.run_id = run_id
        self.bodies = [
            {
                "prompt": f"chaos job {i}",
                "width": 64,
                "height": 64,
                "steps": rng.randint(2, 6),
                "num_images": rng.choice((1, 1, 2)),
                "seed": i,
            }
            for i in range(options.jobs)
        ]
        self.ledger: list[Accepted] = []
        self.unaccepted: list[int] = []
        self.answers_503 = 0
        self.unreachable = 0
        self.other: dict[int, int] = {}
        self.other_samples: list[str] = []
        self.replays = 0
        self.stop = threading.Event()

    def run(self) -> None:
        interval = self.options.duration / max(self.options.jobs, 1)
        start = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for i, body in enumerate(self.bodies):
                delay = start + i * interval - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    return
                self.submit(client, i, body)

    def submit(self, client: httpx.Client, index: int, body: dict[str, Any]) -> None:
        headers = {"Idempotency-Key": f"{self.run_id}-{index}"}
        deadline = time.monotonic() + 90
        tries = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            tries += 1
            try:
                response = client.post("/v1/txt2img", json=body, headers=headers)
            except httpx.HTTPError:
                self.unreachable += 1
                time.sleep(0.5)
                continue
            if response.status_code in (200, 202):
                if tries > 1 and response.headers.get("Idempotent-Replayed") == "true":
                    self.replays += 1
                self.ledger.append(Accepted(index, response.json()["id"], time.time()))
                return
            if response.status_code == 503:
                self.answers_503 += 1
            else:
                self.other[response.status_code] = self.other.get(response.status_code, 0) + 1
                if len(self.other_samples) < 5:
                    self.other_samples.append(f"{response.status_code} {response.text[:300]}")
            time.sleep(0.5)
        self.unaccepted.append(index)


class ChaosRun:
    """One run: start the cluster, submit under chaos, drain, reconcile."""

    def __init__(self, folder: Path, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.cluster = Cluster(folder, options, self.say)
        self.report = Report(options)
        self.t0 = time.monotonic()
        self.killed_at: dict[str, float] = {}
        """Job id -> when the worker running it was killed (Unix seconds)."""
        self.stalled: dict[int, float] = {}
        """Slot -> when its worker is to be resumed (monotonic)."""

    def say(self, message: str) -> None:
        if self.options.verbose:
            print(f"[chaos {time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    # --- chaos ----------------------------------------------------------------------------
    def running_jobs(self) -> dict[str, str]:
        """Running job id -> the worker the record names."""
        c = self.cluster
        ids = [_text(i) for i in c.retrying(lambda: c.client.zrange(c.keys.running(), 0, -1))]
        if not ids:
            return {}
        workers = c.retrying(lambda: [c.client.hget(c.keys.job(i), "worker") for i in ids])
        return {i: _text(w) for i, w in zip(ids, workers, strict=True) if w}

    def kill(self, slot: int) -> None:
        c = self.cluster
        name = c.name_of(slot)
        busy_before = {j for j, w in self.running_jobs().items() if w == name}
        c.kill_worker(slot)
        killed_at = time.time()
        # A job the record still shows running on the dead worker is one the janitor must recover.
        victims = [j for j, w in self.running_jobs().items() if w == name and j in busy_before]
        self.report.kills += 1
        if victims:
            self.report.kills_mid_job += 1
            self.report.mid_job_victims += victims
            self.killed_at.update(dict.fromkeys(victims, killed_at))
        self.say(f"SIGKILL worker {slot} ({name}){' mid-job ' + ', '.join(victims) if victims else ''}")
        c.start_worker(slot)

    def targeted_kill(self, deadline: float) -> bool:
        """Wait for a worker of ours to run a job and kill it while it does; False if none ran one in time."""
        c = self.cluster
        while time.monotonic() < deadline:
            for _job, name in self.running_jobs().items():
                slot = c.slot_of(name)
                if slot is not None and c.worker_ready(slot):
                    before = self.report.kills_mid_job
                    self.kill(slot)
                    if self.report.kills_mid_job > before:
                        return True
            time.sleep(0.02)
        return False

    def pick_victim(self, deadline: float) -> int:
        """A random worker among those running a job (waiting until ``deadline`` for one), else any worker
        (never one that is stalled)."""
        c = self.cluster
        while time.monotonic() < deadline:
            busy = sorted({slot for name in self.running_jobs().values()
                           if (slot := c.slot_of(name)) is not None and slot not in self.stalled})  # fmt: skip
            if busy:
                return self.rng.choice(busy)
            time.sleep(0.02)
        return self.rng.choice(sorted(set(c.workers) - set(self.stalled)) or sorted(c.workers))

    def stall(self, deadline: float) -> bool:
        """Stop a worker while it runs a job (it holds the job and goes silent); False if none ran one in time."""
        c = self.cluster
        while time.monotonic() < deadline:
            for job, name in self.running_jobs().items():
                slot = c.slot_of(name)
                if slot is None or slot in self.stalled or len(self.stalled) + 1 >= len(c.workers):
                    continue  # keep at least one worker awake
                c.stop_worker(slot, resume=False)
                self.stalled[slot] = time.monotonic() + self.options.stall_seconds
                self.report.stalls += 1
                self.report.stalled_jobs.append(job)
                self.say(f"SIGSTOP worker {slot} ({name}) running {job}, for {self.options.stall_seconds:g}s")
                return True
            time.sleep(0.02)
        return False

    def resume_stalled(self, now: float) -> None:
        for slot, until in list(self.stalled.items()):
            if now >= until:
                self.cluster.stop_worker(slot, resume=True)
                del self.stalled[slot]
                self.say(f"SIGCONT worker {slot}")

    def heal(self) -> None:
        """Restart a worker that exited without being killed (and say so: it is a finding)."""
        c = self.cluster
        for slot, proc in list(c.workers.items()):
            if proc.poll() is not None and slot not in self.stalled:
                name = c.name_of(slot) or f"pid {proc.pid}"
                self.report.worker_crashes += 1
                tail = c.worker_log(slot)
                self.report.problems.append(
                    f"worker {slot} ({name}) exited on its own with code {proc.returncode}: ...{tail[-600:]}"
                )
                self.say(f"worker {slot} ({name}) exited by itself (code {proc.returncode}); restarting it")
                c.workers.pop(slot)
                c.start_worker(slot)

    def chaos(self, submitter: Submitter) -> None:
        o = self.options
        c = self.cluster
        start = time.monotonic()
        end = start + o.duration
        restarts = [start + o.duration * (k + 1) / (o.redis_restarts + 1) for k in range(o.redis_restarts)]
        kills_left = o.targeted_kills
        low, high = o.kill_every
        next_kill = start + self.rng.uniform(low, high) if high > 0 else float("inf")
        stall_at = [start + o.duration * (k + 0.5) / (o.stalls + 1) for k in range(o.stalls)]
        oom_at = start + o.duration * 0.6 if o.oom_seconds > 0 else None
        while time.monotonic() < end or submitter.is_alive() or self.stalled:
            now = time.monotonic()
            self.resume_stalled(now)
            self.heal()
            if oom_at is not None and now >= oom_at:
                oom_at = None
                self.say(f"Redis out of memory for {o.oom_seconds:g}s (maxmemory below what it holds)")
                c.fill_redis(full=True)
                time.sleep(o.oom_seconds)
                c.fill_redis(full=False)
                self.report.oom_phases += 1
                self.say("Redis has room again")
                continue
            if stall_at and now >= stall_at[0] and now < end:
                stall_at.pop(0)
                if not self.stall(min(end, now + 10)) and now + 3 < end:
                    stall_at.insert(0, now + 3)  # no busy worker to stall (Redis down?): try again soon
                continue
            if kills_left and now < end:
                if self.targeted_kill(min(end, now + 10)):
                    kills_left -= 1
                continue
            if restarts and now >= restarts[0]:
                restarts.pop(0)
                sig = c.redis_signal()
                self.say(f"restarting Redis ({sig.name}, down {o.redis_down_seconds:.0f}s)")
                c.restart_redis()
                c.redis_restarts_done += 1
                self.report.redis_restarts += 1
                self.report.redis_signals.append(sig.name)
                self.say("Redis is back")
                continue
            if now >= next_kill and now < end and c.workers:
                self.kill(self.pick_victim(now + o.busy_wait))
                next_kill = time.monotonic() + self.rng.uniform(low, high)
            time.sleep(0.1)

    # --- the run --------------------------------------------------------------------------
    def run(self) -> Report:
        o = self.options
        c = self.cluster
        try:
            c.start_redis()
            c.start_gateway()
            c.start_dispatcher()
            for slot in range(o.workers):
                c.start_worker(slot)
            c.wait_workers_ready()
            self.say(f"{o.workers} workers, gateway {c.base_url}, Redis :{c.redis_port}, prefix {c.prefix}")
            submitter = Submitter(c.base_url, o, c.prefix, self.rng)
            started = time.monotonic()
            submitter.start()
            try:
                self.chaos(submitter)
            finally:
                submitter.stop.set()
                submitter.join(timeout=120)
            self.report.wall_seconds = time.monotonic() - started
            self.say(f"chaos over: {len(submitter.ledger)} accepted; draining")
            drained = time.monotonic()
            self.drain(submitter.ledger)
            self.report.drain_seconds = time.monotonic() - drained
            self.reconcile(submitter)
            return self.report
        finally:
            c.close()

    def statuses(self, ids: list[str]) -> list[str]:
        c = self.cluster

        def read() -> list[str]:
            with c.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(c.keys.job(job_id), "status")
                return [_text(s) if s is not None else "" for s in pipe.execute()]

        return c.retrying(read)

    def drain(self, ledger: list[Accepted]) -> None:
        ids = [a.job_id for a in ledger]
        deadline = time.monotonic() + self.options.drain_seconds
        last_note = 0.0
        while time.monotonic() < deadline:
            self.heal()  # a worker that dies now is restarted too: the drain measures recovery, not capacity
            open_ = [s for s in self.statuses(ids) if s not in TERMINAL]
            if not open_:
                return
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                self.say(f"draining: {len(open_)} jobs not ended ({', '.join(sorted(set(open_)))})")
            time.sleep(0.5)

    def reconcile(self, submitter: Submitter) -> None:
        c = self.cluster
        r = self.report
        o = self.options
        r.accepted = len(submitter.ledger)
        r.unaccepted = len(submitter.unaccepted)
        r.answers_503 = submitter.answers_503
        r.answers_unreachable = submitter.unreachable
        r.answers_other = dict(submitter.other)
        r.replays = submitter.replays
        r.problems += [f"unexpected submit answer: {s}" for s in submitter.other_samples]
        if r.unaccepted:
            r.problems.append(f"{r.unaccepted} submits never got a 2xx: indexes {submitter.unaccepted[:10]}")
        ids = [a.job_id for a in submitter.ledger]
        if len(set(ids)) != len(ids):
            r.duplicated += len(ids) - len(set(ids))
            r.problems.append("one job id was answered for two different submits")
        outputs = c.data / "objects" / "outputs"
        for accepted in submitter.ledger:
            job_id = accepted.job_id
            raw = c.client.hgetall(c.keys.job(job_id))
            if not raw:
                r.lost += 1
                r.problems.append(f"lost: {job_id} (submit {accepted.index}) has no record")
                continue
            record = from_hash(raw)
            events = [
                (_text(f[b"event"]), json.loads(_text(f.get(b"data", b"{}"))))
                for _, f in c.client.xrange(c.keys.events(job_id))
            ]
            requeues = sum(1 for name, data in events if name == "queued" and data.get("reason") == "worker-lost")
            r.requeues += requeues
            r.requeued_jobs += bool(requeues)
            r.attempts_histogram[record.attempts] = r.attempts_histogram.get(record.attempts, 0) + 1
            status = record.status.value
            if status not in TERMINAL:
                r.stuck += 1
                r.problems.append(f"stuck: {job_id} is {status} (worker {record.worker}, attempts {record.attempts})")
                continue
            if record.finished_at:
                r.to_terminal.append(record.finished_at - record.created_at)
            last_step: int | None = None
            for name, data in events:
                if name == "started":
                    last_step = 0  # a new run starts from nothing
                elif name == "progress" and last_step is not None:
                    if int(data.get("step", 0)) <= last_step:
                        r.progress_backwards += 1
                        r.problems.append(f"progress went backwards in {job_id}: {last_step} then {data.get('step')}")
                    last_step = int(data.get("step", 0))
            terminal_events = [name for name, _ in events if name in TERMINAL]
            if terminal_events != [status]:
                r.duplicated += 1
                r.problems.append(f"duplicated: {job_id} ({status}) has terminal events {terminal_events}")
            if status == "succeeded":
                r.succeeded += 1
                wanted = int(record.request.get("num_images", 1))
                keys = [img.key for img in ImageJobResult.model_validate(record.result).images]
                run = f"outputs/{job_id}/{record.attempts}"  # the run that succeeded: its own folder
                folder = outputs / job_id / str(record.attempts)
                names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
                expected = {k.rsplit("/", 1)[-1] for k in keys} | {"manifest.json"}
                in_run = all(k.rsplit("/", 1)[0] == run for k in keys)
                if len(keys) != wanted or len(set(keys)) != len(keys) or not in_run or names != expected:
                    r.duplicated += 1
                    r.problems.append(
                        f"duplicated: {job_id} wants {wanted} images, record has {keys}, {run} has {sorted(names)}"
                    )
                wanted_files = [*keys, *([result.manifest_key] if (result := ImageJobResult.model_validate(
                    record.result)).manifest_key else [])]  # fmt: skip
                missing = [k for k in wanted_files if not (c.data / "objects" / k).is_file()]
                if missing or not result.manifest_key:
                    r.missing_files += 1
                    r.problems.append(f"succeeded but files are missing: {job_id}: {missing or 'no manifest'}")
                runs = sorted(p.name for p in (outputs / job_id).iterdir()) if (outputs / job_id).is_dir() else []
                strays = [name for name in runs if name != str(record.attempts)]
                if strays:
                    r.stray_runs += len(strays)
                    r.problems.append(f"stray runs of {job_id} (succeeded in run {record.attempts}): {strays}")
            elif status == "failed" and record.error is not None and record.error.type == WORKER_LOST:
                r.failed_worker_lost += 1
                if record.attempts < o.max_attempts:
                    r.lost += 1
                    r.problems.append(f"lost: {job_id} failed worker-lost after only {record.attempts} runs")
            else:
                r.lost += 1
                problem = record.error.model_dump(exclude_none=True) if record.error else None
                r.problems.append(f"lost: {job_id} ended {status} ({problem}, attempts {record.attempts})")
        for job_id in dict.fromkeys(r.mid_job_victims):
            killed = self.killed_at[job_id]  # the last kill that hit it
            requeued = [
                int(_text(entry_id).split("-")[0]) / 1000 - killed  # a stream id starts with its Unix milliseconds
                for entry_id, f in c.client.xrange(c.keys.events(job_id))
                if f[b"event"] == b"queued" and b'"worker-lost"' in f.get(b"data", b"")
            ]
            raw = c.client.hgetall(c.keys.job(job_id))
            ended_with = from_hash(raw).error if raw else None
            if any(t > -1 for t in requeued):
                r.victims_requeued += 1
                r.kill_to_requeue.append(max(0.0, min(t for t in requeued if t > -1)))
            elif ended_with is None or ended_with.type != WORKER_LOST:  # a last attempt ends failed instead
                r.problems.append(f"{job_id} was running when its worker was killed but was never requeued")
        known = set(ids)
        indexed = {_text(i) for i in c.client.zrange(c.keys.index("image", "anonymous"), 0, -1)}
        orphans = sorted(indexed - known)
        r.orphans = len(orphans)
        if orphans:
            r.problems.append(f"orphans (in Redis, named by no 2xx): {orphans[:5]}")
        for label in ("webhooks", *sorted(p.stem for p in c.logs.glob("worker-*.log"))):
            text = c.log_tail(label, chars=10_000_000)
            r.claimed_requeues += text.count("taken but never started")
            r.zombie_writes_refused += text.count('"state": "superseded"') + text.count("ended (superseded) elsewhere")
        for job_id in dict.fromkeys(r.stalled_jobs):
            events = [
                (_text(f[b"event"]), _text(f.get(b"data", b"{}"))) for _, f in c.client.xrange(c.keys.events(job_id))
            ]
            if any(name == "queued" and '"worker-lost"' in data for name, data in events):
                r.stalled_requeued += 1


def run(options: Options, folder: Path | None = None) -> Report:
    """Run the chaos scenario in ``folder`` (a temporary one, removed afterwards, when None)."""
    if folder is not None:
        return ChaosRun(folder, options).run()
    with tempfile.TemporaryDirectory(prefix="sdserve-chaos-") as tmp:
        return ChaosRun(Path(tmp), options).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of submitting under chaos")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", default="4,8", help="seconds between worker kills: LOW,HIGH (0,0: none)")
    parser.add_argument("--targeted-kills", type=int, default=0, help="first kill this many workers mid-job")
    parser.add_argument("--busy-wait", type=float, default=2.0, help="seconds a kill waits for a busy worker")
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--redis-signal", choices=("term", "kill", "mixed"), default="term")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down per restart")
    parser.add_argument("--stalls", type=int, default=0, help="busy workers to SIGSTOP and later SIGCONT")
    parser.add_argument("--stall-seconds", type=float, default=18.0, help="how long each stall lasts")
    parser.add_argument("--skew", type=float, default=0.0, help="dispatcher clock +S s, first worker's -S/2 s")
    parser.add_argument("--oom-seconds", type=float, default=0.0, help="one phase of a full Redis, this long")
    parser.add_argument("--drain", type=float, default=240.0, help="seconds to wait for every job to end")
    parser.add_argument("--fixed-names", action="store_true", help="restart workers under the same name")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--models-cache", metavar="DIR", help="generated built-in models (default: in the run folder)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (logs, AOF, outputs)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args()
    low, high = (float(x) for x in args.kill_every.split(","))
    options = Options(
        jobs=args.jobs,
        duration=args.duration,
        workers=args.workers,
        kill_every=(low, high),
        targeted_kills=args.targeted_kills,
        busy_wait=args.busy_wait,
        redis_restarts=args.redis_restarts,
        redis_signal=args.redis_signal,
        redis_down_seconds=args.redis_down,
        stalls=args.stalls,
        stall_seconds=args.stall_seconds,
        skew_seconds=args.skew,
        oom_seconds=args.oom_seconds,
        drain_seconds=args.drain,
        fixed_names=args.fixed_names,
        seed=args.seed,
        models_cache=Path(args.models_cache) if args.models_cache else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanup
    folder = Path(args.keep) if args.keep else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    report = run(options, folder)
    print()
    print(
        f"`python bench/chaos.py --jobs {options.jobs} --duration {options.duration:g} --workers {options.workers}"
        f" --kill-every {args.kill_every} --redis-restarts {options.redis_restarts}"
        f" --redis-signal {options.redis_signal} --stalls {options.stalls} --skew {options.skew_seconds:g}"
        f" --oom-seconds {options.oom_seconds:g}{' --fixed-names' if options.fixed_names else ''}`"
        f" on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print()
    print(report.table())
    if report.problems:
        print("\nProblems:")
        for line in report.problems:
            print(f"- {line}")
    if args.json:
        data = {k: v for k, v in report.__dict__.items() if k != "options"}
        data["options"] = {k: str(v) for k, v in options.__dict__.items()}
        data["to_terminal_p50"] = statistics.median(report.to_terminal) if report.to_terminal else None
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
