"""Submit throughput and latency of the gateway on the CPU, beside its two ingredients alone (issue 8).

Four measurements in one run, against the real Redis (database 12 by default, a unique key prefix,
every key it wrote deleted at the end):

1. a bare FastAPI endpoint that parses the same txt2img body (``sdserve.images.requests.Txt2ImgRequest``) and
   answers 202, served by uvicorn in one subprocess with the gateway's own uvicorn options;
2. a bare loop of RQ enqueues (``Queue.enqueue_call("worker.engine.slot.run_job", ...)``, JSON serializer),
   in this process, one at a time;
3. the real gateway (``python -m sdserve.cli gateway`` subprocess, ``SDSERVE_UNSERVED_MODELS=queue``, no worker):
   ``POST /v1/txt2img`` with the same small body;
4. submit → the worker *starting* the job, on an idle worker (``python -m sdserve.cli worker`` subprocess, tiny
   model, no warm-up): jobs one at a time, each waited for (on its event stream, no polling) before
   the next; ``started_at - created_at`` from the job record.

1 and 3 are driven by ``wrk`` (a C load generator, one thread, so the single server process keeps its
core) at the same concurrency, twice: saturated (``--connections``, throughput and latency under load)
and one connection at a time (latency without queueing). Without ``wrk`` on the PATH a separate asyncio
httpx process stands in (it takes much more CPU; the table says so). Prints one markdown table with the
machine and the targets of issue 8:

- the gateway sustains at least half the slower ingredient's rate;
- it adds at most 5 ms at p50 over the bare endpoint (judged both unloaded and at the load
  concurrency; saturated, a closed loop's p50 is about connections / throughput, so that verdict mostly
  restates the throughput one);
- an idle worker starts a job within 20 ms of its submission (judged on p99).

    python bench/gateway.py [--duration 8] [--connections 32] [--jobs 30] [--redis-url redis://127.0.0.1:6379/12]
                            [--worker-env SDSERVE_MAX_BATCH_IMAGES=4 ...]

The subprocesses inherit the environment, so ``PYTHONPATH=/path/to/other/tree python bench/gateway.py``
measures another checkout (the table names the code under test). The machine has few cores and is
shared: each row runs about 10-15 s, the whole script about a minute; run it sparingly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from app.jobs.queue import RUN_JOB
from sdserve.contract.lifecycle import TERMINAL_EVENTS
from sdserve.images.requests import Txt2ImgRequest  # module level: the bare endpoint's annotation resolves here
from sdserve.jobs.presence import live_workers
from sdserve.keys import Keys

BODY: dict[str, Any] = {"prompt": "a lighthouse at dusk", "model": "tiny", "width": 64, "height": 64, "steps": 1}
"""The small txt2img body every HTTP row sends (tiny model, 64x64, one step: jobs finish fast)."""

TERMINAL = {event.value.encode() for event in TERMINAL_EVENTS}
TARGET_RATE_FRACTION = 0.5
TARGET_ADDED_P50_MS = 5.0
TARGET_START_MS = 20.0


# --- small helpers ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Load:
    """One load-generator run: throughput and latency."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    connections: int

    @property
    def cell(self) -> str:
        return f"{self.p50_ms:.2f} / {self.p99_ms:.2f}"


@dataclass
class Row:
    name: str
    throughput: str
    saturated: str
    unloaded: str
    notes: list[str] = field(default_factory=list)


# --- subprocesses ----------------------------------------------------------------------------------


class Processes:
    """Subprocesses this run started: each in its own session, always stopped (TERM, then KILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: dict[int, str] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.names[proc.pid] = name
        self.procs.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 30) -> str:
        path = self.logs / f"{self.names.get(proc.pid, '?')}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is ours alone
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def wait_http(procs: Processes, proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Until ``url`` answers anything over HTTP (or the process dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{procs.names.get(proc.pid)} exited with {proc.returncode}:\n{procs.log_tail(proc)}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{procs.log_tail(proc)}")


# --- the bare endpoint (runs in a subprocess: `python bench/gateway.py --serve-bare PORT`) ----------


def serve_bare(port: int) -> None:
    """A FastAPI app that parses the txt2img body and answers 202, on uvicorn like `sdserve gateway`."""
    import uvicorn
    from fastapi import FastAPI, status

    app = FastAPI()

    @app.post("/v1/txt2img", status_code=status.HTTP_202_ACCEPTED)
    async def create_txt2img(body: Txt2ImgRequest) -> dict[str, str]:
        return {"status": "queued", "task": body.task}

    # The options app.main.serve passes (loop and http stay "auto": uvloop and httptools when installed).
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


# --- load generators -------------------------------------------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


class LoadGenerator:
    """``wrk`` when installed, else an asyncio httpx client in a separate process."""

    def __init__(self, workdir: Path) -> None:
        self.wrk = shutil.which("wrk")
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY)))

    @property
    def name(self) -> str:
        return "wrk -t1" if self.wrk else "httpx asyncio client (separate process)"

    def run(self, url: str, connections: int, seconds: float) -> Load:
        if self.wrk:
            argv = [self.wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
            argv += ["-s", str(self.script), url]
        else:
            argv = [sys.executable, __file__, "--client", url, str(connections), str(seconds)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        match = re.search(r"WRKJSON (\{.*\})", out.stdout)
        if match is None:
            raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        data = json.loads(match.group(1))
        return Load(
            rps=data["requests"] / (data["duration_us"] / 1e6),
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            requests=data["requests"],
            errors=data["errors"] + data["non2xx"],
            connections=connections,
        )


def client_main(url: str, connections: int, seconds: float) -> None:
    """Fallback load generator (`--client`): the same output line as the wrk script."""

    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        payload = json.dumps(BODY).encode()
        headers = {"content-type": "application/json"}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:
            start = time.perf_counter()
            stop = start + seconds

            async def loop() -> None:
                nonlocal errors
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    try:
                        response = await client.post(url, content=payload, headers=headers)
                        ok = 200 <= response.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok

            await asyncio.gather(*(loop() for _ in range(connections)))
            elapsed = time.perf_counter() - start
        summary = {
            "requests": len(latencies),
            "duration_us": int(elapsed * 1e6),
            "errors": 0,
            "non2xx": errors,
            "p50_us": int(pct(latencies, 0.50) * 1e6) if latencies else 0,
            "p99_us": int(pct(latencies, 0.99) * 1e6) if latencies else 0,
        }
        print("WRKJSON " + json.dumps(summary), flush=True)

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_http(
    gen: LoadGenerator, url: str, connections: int, seconds: float, server_pid: int
) -> tuple[Load, Load, float]:
    """Warm up, then a saturated run at ``connections`` and an unloaded run at one connection.

    Also returns the server process's CPU time per request (ms) during the saturated run.
    """
    gen.run(url, connections, 2)
    before = cpu_seconds(server_pid)
    saturated = gen.run(url, connections, seconds)
    cpu_ms = (cpu_seconds(server_pid) - before) / max(1, saturated.requests) * 1000
    unloaded = gen.run(url, 1, max(3.0, seconds / 2))
    return saturated, unloaded, cpu_ms


# --- the bare RQ enqueue loop ----------------------------------------------------------------------


def measure_rq(redis_url: str, prefix: str, seconds: float) -> tuple[float, list[float]]:
    """Enqueue one job at a time for ``seconds``; jobs/s and each enqueue's latency (s)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    connection = redis.Redis.from_url(redis_url)
    try:
        queue = Queue(f"{prefix}:bare", connection=connection, serializer=JSONSerializer)

        def enqueue(n: int) -> None:
            job_id = f"{prefix}-bare-{n}"  # the prefix in every id: cleanup finds rq:job:<id> by it
            queue.enqueue_call(
                RUN_JOB, args=[job_id], job_id=job_id, timeout=600, result_ttl=3600, failure_ttl=604800,
                description=f"txt2img tiny {job_id}",
            )  # fmt: skip

        for n in range(200):  # warm-up (first call asks Redis for its version)
            enqueue(n)
        latencies: list[float] = []
        n = 200
        start = time.perf_counter()
        stop = start + seconds
        while (t0 := time.perf_counter()) < stop:
            enqueue(n)
            latencies.append(time.perf_counter() - t0)
            n += 1
        return len(latencies) / (time.perf_counter() - start), latencies
    finally:
        connection.close()


# --- the services ----------------------------------------------------------------------------------


def sdserve_env(redis_url: str, prefix: str, data: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    env.update(
        SDSERVE_REDIS_URL=redis_url,
        SDSERVE_KEY_PREFIX=prefix,
        SDSERVE_DATA_DIR=str(data),
        SDSERVE_UNSERVED_MODELS="queue",
        SDSERVE_LOG_LEVEL="warning",
        SDSERVE_HOST="127.0.0.1",
        SDSERVE_PORT=str(port),
        # The load row queues jobs with no worker to take them: lift the queue-depth cap (trees without
        # the setting ignore it) so that every answer is a 202, not a 503 once the cap is reached.
        SDSERVE_MAX_QUEUE_DEPTH="1000000000",
    )
    return env


def sdserve_command(process: str) -> list[str]:
    """`sdserve <process>` run by this interpreter (as `sdserve up` starts its children)."""
    return [sys.executable, "-m", "sdserve.cli", process]


def start_gateway(procs: Processes, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    proc = procs.start(name, sdserve_command("gateway"), env)
    base = f"http://127.0.0.1:{env['SDSERVE_PORT']}"
    wait_http(procs, proc, f"{base}/healthz")
    return proc, base


def check_accepts(url: str) -> dict[str, Any]:
    """One POST before loading a server: it must answer 202 (else the numbers mean nothing)."""
    response = httpx.post(url, json=BODY, timeout=10)
    if response.status_code != 202:
        raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body


def measure_worker_start(
    procs: Processes,
    env: dict[str, str],
    base: str,
    r: redis.Redis,
    jobs: int,
    extra_env: dict[str, str],
    warmup_jobs: int = 3,
) -> tuple[list[float], list[float], list[str]]:
    """Submit → started on an idle worker, one job at a time.

    Returns the server-side delays (``started_at - created_at``), the client-side ones (just before the
    POST → ``started_at``), both in seconds, and the statuses the jobs ended in.
    """
    prefix = env["SDSERVE_KEY_PREFIX"]
    keys = Keys(prefix)
    name = f"{prefix}-worker"
    worker_env = {
        **env,
        "SDSERVE_WORKER_MODELS": "tiny",
        "SDSERVE_WARMUP": "false",
        "SDSERVE_WORKER_NAME": name,
        "SDSERVE_HEARTBEAT_SECONDS": "5",
        "SDSERVE_WORKER_METRICS_PORT": "0",  # no metrics endpoint: a worker on this host may hold the port
        **extra_env,
    }
    worker = procs.start("worker", sdserve_command("worker"), worker_env)
    deadline = time.monotonic() + 300

    def ready() -> bool:  # the worker registers as <name>.<pid>.<random>
        return any(n.startswith(f"{name}.") and w.ready for n, w in live_workers(r, keys).items())

    while not ready():
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}:\n{procs.log_tail(worker)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready within 300s:\n{procs.log_tail(worker)}")
        time.sleep(0.2)

    server: list[float] = []
    client_side: list[float] = []
    statuses: list[str] = []
    with httpx.Client(timeout=10) as client:
        for n in range(warmup_jobs + jobs):
            time.sleep(0.15)  # the worker is back in its blocking pop: idle
            t_client = time.time()
            response = client.post(f"{base}/v1/txt2img", json=BODY)
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.text[:500]}")
            job_id = response.json()["id"]
            stream, after, ended = keys.events(job_id), "0", False
            job_deadline = time.monotonic() + 60
            while not ended:
                if time.monotonic() > job_deadline or worker.poll() is not None:
                    raise RuntimeError(f"job {job_id} did not end:\n{procs.log_tail(worker)}")
                for _, entries in r.xread({stream: after}, block=1000) or []:
                    for entry_id, fields in entries:
                        after = entry_id
                        ended = ended or fields.get(b"event") in TERMINAL
            created, started, status = r.hmget(keys.job(job_id), ["created_at", "started_at", "status"])
            if n < warmup_jobs:
                continue  # the first jobs run code paths (and pipeline set-up) for the first time
            if created is None or started is None:
                raise RuntimeError(f"job {job_id} has no created_at/started_at")
            server.append(float(started) - float(created))
            client_side.append(float(started) - t_client)
            statuses.append((status or b"?").decode())
    procs.stop(worker)
    return server, client_side, statuses


# --- cleanup ---------------------------------------------------------------------------------------

_JOB_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def cleanup(r: redis.Redis, prefixes: list[str]) -> int:
    """Delete every key this run wrote: its prefixes' keys, and RQ's keys of its jobs. Returns the count."""
    job_ids: set[bytes] = set()
    for prefix in prefixes:
        for key in r.scan_iter(match=Keys(prefix).index("*", "*"), count=1000):  # the listing indexes
            job_ids.update(r.zrange(key, 0, -1))
    doomed: list[bytes] = []
    for key in r.scan_iter(count=5000):
        match = _JOB_ID.search(key)
        if any(p.encode() in key for p in prefixes) or (match is not None and match.group(0) in job_ids):
            doomed.append(key)
    deleted = 0
    for i in range(0, len(doomed), 1000):
        deleted += int(r.unlink(*doomed[i : i + 1000]))
    for registry in (b"rq:queues", b"rq:workers"):  # sets of queue/worker keys RQ keeps across names
        members = [m for m in r.smembers(registry) if any(p.encode() in m for p in prefixes)]
        if members:
            r.srem(registry, *members)
    return deleted


# --- the run ---------------------------------------------------------------------------------------


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def code_location() -> str:
    """Where `sdserve` and `app` are imported from (PYTHONPATH can point the run at another tree)."""
    import importlib.util

    spec = importlib.util.find_spec("app")
    origin = spec.origin if spec is not None and spec.origin else "?"
    return str(Path(origin).parent.parent)


def machine_lines(r: redis.Redis, gen: LoadGenerator) -> list[str]:
    wrk_version = "-"
    if gen.wrk:
        out = subprocess.run([gen.wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (out.stdout + out.stderr).split("\n")[0].strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    libs = ", ".join(
        f"{d} {version(d)}"
        for d in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "redis", "rq", "torch")
    )
    return [
        f"- Machine: {cores()} cores, {cpu_model()}, {platform.system()} {platform.release()}; "
        f"load average at start {load}",
        f"- Python {platform.python_version()}; Redis server {r.info('server').get('redis_version')}; {libs}",
        f"- Load generator: {gen.name} ({wrk_version})",
        f"- Code under test: {code_location()}",
    ]


def run(args: argparse.Namespace) -> int:
    r = redis.Redis.from_url(args.redis_url, socket_timeout=30)
    r.ping()
    base_prefix = f"gwbench{uuid.uuid4().hex[:8]}"
    prefixes = [f"{base_prefix}a", f"{base_prefix}w"]  # a: the loaded gateway; w: the idle worker
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdserve-gwbench-")))
        procs = Processes(tmp)
        stack.callback(lambda: print(f"cleanup: {cleanup(r, prefixes)} Redis keys deleted", file=sys.stderr))
        stack.callback(procs.stop_all)
        gen = LoadGenerator(tmp)
        machine = machine_lines(r, gen)
        c, secs = args.connections, args.duration

        # 1. the bare endpoint
        port = free_port()
        bare = procs.start("bare", [sys.executable, __file__, "--serve-bare", str(port)], dict(os.environ))
        wait_http(procs, bare, f"http://127.0.0.1:{port}/")
        check_accepts(f"http://127.0.0.1:{port}/v1/txt2img")
        print("measuring the bare endpoint...", file=sys.stderr)
        bare_sat, bare_one, bare_cpu = measure_http(gen, f"http://127.0.0.1:{port}/v1/txt2img", c, secs, bare.pid)
        procs.stop(bare)
        rows.append(
            Row(
                "bare FastAPI endpoint (parse body, 202)",
                fmt_rate(bare_sat.rps, "req/s"),
                bare_sat.cell,
                bare_one.cell,
                [f"uvicorn, 1 process; {bare_cpu:.2f} ms server CPU/request; {bare_one.rps:,.0f} req/s at 1 connection"]
                + ([f"{bare_sat.errors} errors"] if bare_sat.errors else []),
            )
        )

        # 2. the bare RQ enqueue loop
        print("measuring the bare RQ enqueue loop...", file=sys.stderr)
        rq_rate, rq_lat = measure_rq(args.redis_url, prefixes[0], secs)
        rows.append(
            Row(
                "bare RQ enqueue loop",
                fmt_rate(rq_rate, "jobs/s"),
                "-",
                f"{pct(rq_lat, 0.5) * 1000:.2f} / {pct(rq_lat, 0.99) * 1000:.2f}",
                ["`enqueue_call`, JSONSerializer, sync redis-py, one at a time; latency per enqueue"],
            )
        )

        # 3. the real gateway (no worker: jobs stay queued)
        data = tmp / "data"
        data.mkdir()
        env = sdserve_env(args.redis_url, prefixes[0], data, free_port())
        gateway, base = start_gateway(procs, "gateway", env)
        check_accepts(f"{base}/v1/txt2img")
        print("measuring the gateway...", file=sys.stderr)
        gw_sat, gw_one, gw_cpu = measure_http(gen, f"{base}/v1/txt2img", c, secs, gateway.pid)
        procs.stop(gateway)
        depth = r.llen(Keys(prefixes[0]).queue_key("tiny"))  # image jobs wait in their model's queue
        rows.append(
            Row(
                "sdserve gateway `POST /v1/txt2img`",
                fmt_rate(gw_sat.rps, "req/s"),
                gw_sat.cell,
                gw_one.cell,
                [
                    f"`sdserve gateway`, no worker; {gw_cpu:.2f} ms server CPU/request; {gw_one.rps:,.0f} req/s at "
                    f"1 connection; {depth:,} jobs queued at end"
                ]
                + ([f"{gw_sat.errors} errors"] if gw_sat.errors else []),
            )
        )

        # 4. submit → started on an idle worker (a fresh prefix: an empty queue)
        env = sdserve_env(args.redis_url, prefixes[1], data, free_port())
        gateway, base = start_gateway(procs, "gateway-w", env)
        print("starting a worker and measuring submit → start...", file=sys.stderr)
        extra = dict(item.split("=", 1) for item in args.worker_env)
        server, client_side, statuses = measure_worker_start(procs, env, base, r, args.jobs, extra)
        procs.stop(gateway)
        ok = statuses.count("succeeded")
        rows.append(
            Row(
                "submit → idle worker starts the job",
                "-",
                "-",
                f"{pct(server, 0.5) * 1000:.2f} / {pct(server, 0.99) * 1000:.2f}",
                [
                    f"`started_at - created_at` of {len(server)} jobs one at a time ({ok} succeeded); "
                    f"from just before the client's POST: {pct(client_side, 0.5) * 1000:.2f} / "
                    f"{pct(client_side, 0.99) * 1000:.2f} ms"
                ]
                + ([f"worker env {' '.join(args.worker_env)}"] if args.worker_env else []),
            )
        )

    # --- the table and the targets
    print(f"\n### Gateway submit path on the CPU (`bench/gateway.py`, {time.strftime('%Y-%m-%d')})\n")
    print("\n".join(machine))
    print(
        f"- Body: `{json.dumps(BODY)}`; HTTP rows: {args.duration:g} s at {c} connections after a 2 s warm-up, "
        f"then {max(3.0, args.duration / 2):g} s at 1 connection\n"
    )
    print(f"| | throughput | p50 / p99 at {c} conns (ms) | p50 / p99 unloaded (ms) | notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.name} | {row.throughput} | {row.saturated} | {row.unloaded} | {'; '.join(row.notes)} |")

    slower = min(bare_sat.rps, rq_rate)
    added_one = gw_one.p50_ms - bare_one.p50_ms
    added_sat = gw_sat.p50_ms - bare_sat.p50_ms
    start_p50, start_p99 = pct(server, 0.5) * 1000, pct(server, 0.99) * 1000

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    print("\nTargets (issue 8):\n")
    print(
        f"- Gateway sustains ≥ {TARGET_RATE_FRACTION:.0%} of the slower ingredient "
        f"({slower:,.0f}/s → ≥ {slower * TARGET_RATE_FRACTION:,.0f} req/s): {gw_sat.rps:,.0f} req/s "
        f"({gw_sat.rps / slower:.0%}) — {verdict(gw_sat.rps >= TARGET_RATE_FRACTION * slower)}"
    )
    print(
        f"- Adds ≤ {TARGET_ADDED_P50_MS:g} ms at p50 over the bare endpoint: +{added_one:.2f} ms unloaded "
        f"— {verdict(added_one <= TARGET_ADDED_P50_MS)}; +{added_sat:.2f} ms at {c} connections "
        f"— {verdict(added_sat <= TARGET_ADDED_P50_MS)}"
    )
    print(
        f"- An idle worker starts a job within {TARGET_START_MS:g} ms of its submission: p50 {start_p50:.2f} ms, "
        f"p99 {start_p99:.2f} ms — {verdict(start_p99 <= TARGET_START_MS)} (judged on p99)"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of saturated load per row")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections of the HTTP rows")
    parser.add_argument("--jobs", type=int, default=30, help="jobs of the submit → start row")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of the worker"
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("URL", "CONNS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return
    if args.client is not None:
        client_main(args.client[0], int(args.client[1]), float(args.client[2]))
        return
    # SIGTERM/SIGHUP unwind like Ctrl-C, so subprocesses, temp dirs and Redis keys are cleaned up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
