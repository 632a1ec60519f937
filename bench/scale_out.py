"""Scale-out on one machine: the throughput of one `sdserve worker` against two on one queue.

Redis, the gateway and the workers are subprocesses (the same harness as ``bench/chaos.py``: its own
``redis-server``, the tiny model on the CPU, one torch thread per worker, each worker in its own session so
the kernel's autogroup scheduling gives each its own share). Jobs go in through the gateway in bursts of
``--jobs``; a burst's time runs from its first submit to the last job's ``finished_at``.

Noise on a shared machine only ever slows a burst down, and background load drifts: the bursts run in the
order 1, 2, 2, 1 workers (``--rounds`` times), so a linear drift hits both sides alike, and the table gives
each side's best and median. It also gives the CPU seconds the workers got per wall second: on a machine
busy with other work two workers cannot get two cores, and the speed-up is bounded by what they got.

    python bench/scale_out.py --jobs 16 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos import Cluster, Options

from sdserve.jobs.record import from_hash

REQUEST = {"prompt": "a lighthouse, scaled out", "model": "tiny", "width": 64, "height": 64, "steps": 8}
TERMINAL = {b"succeeded", b"failed", b"canceled"}


def cpu_seconds(cluster: Cluster) -> float:
    """CPU time (user + system) the running workers have used so far."""
    total = 0.0
    for proc in cluster.workers.values():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def burst(cluster: Cluster, client: httpx.Client, jobs: int) -> tuple[float, float, dict[str, int]]:
    """Submit ``jobs`` at once; the wall seconds until the last ended, the cores the workers got, who ran what."""
    cpu = cpu_seconds(cluster)
    started = time.time()
    ids = []
    for _ in range(jobs):
        response = client.post("/v1/txt2img", json=REQUEST)
        response.raise_for_status()
        ids.append(response.json()["id"])
    keys = cluster.keys
    while True:
        with cluster.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            if all(status in TERMINAL for status in pipe.execute()):
                break
        time.sleep(0.1)
    records = [from_hash(cluster.client.hgetall(keys.job(job_id))) for job_id in ids]
    failed = [r.id for r in records if r.status.value != "succeeded"]
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")
    wall = max(r.finished_at or 0.0 for r in records) - started
    ran: dict[str, int] = {}
    for r in records:
        ran[r.worker or "?"] = ran.get(r.worker or "?", 0) + 1
    return wall, (cpu_seconds(cluster) - cpu) / wall, ran


def run(jobs: int, rounds: int, folder: Path) -> str:
    cluster = Cluster(folder, Options(), say=lambda message: None)
    walls: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[float]] = {1: [], 2: []}
    try:
        cluster.start_redis()
        cluster.start_gateway()
        cluster.start_worker(0)
        cluster.start_worker(1)
        cluster.wait_workers_ready()
        with httpx.Client(base_url=cluster.base_url, timeout=60) as client:
            burst(cluster, client, 4)  # warm both (a process's first job is slower)
            for _ in range(rounds):
                for count in (1, 2, 2, 1):
                    if count == 1:
                        cluster.stop_worker(1, resume=False)  # SIGSTOP: the second worker takes nothing
                    wall, got, ran = burst(cluster, client, jobs)
                    if count == 1:
                        cluster.stop_worker(1, resume=True)
                    expected = 1 if count == 1 else 2
                    if len(ran) != expected:
                        raise RuntimeError(f"{count} worker(s) expected to run the burst, {ran} did")
                    walls[count].append(wall)
                    cores[count].append(got)
    finally:
        cluster.close()

    def line(count: int) -> str:
        w, c = walls[count], cores[count]
        return (
            f"| {count} | {min(w):.2f} | {statistics.median(w):.2f} | {jobs / min(w):.2f} | {min(c):.2f}–{max(c):.2f} |"
        )

    speedup = min(walls[1]) / min(walls[2])
    return "\n".join(
        [
            f"`python bench/scale_out.py --jobs {jobs} --rounds {rounds}` on {os.cpu_count()} CPUs "
            f"(load average at the end {os.getloadavg()[0]:.1f}), Python {sys.version.split()[0]}",
            "",
            "| workers | best burst (s) | median burst (s) | jobs/s (best) | cores the workers got |",
            "|---|---:|---:|---:|---:|",
            line(1),
            line(2),
            "",
            f"speed-up of two workers over one (best bursts): **{speedup:.2f}×**",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16, help="jobs per burst")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 1, 2, 2, 1 workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sdserve-scale-") as folder:
        print(run(args.jobs, args.rounds, Path(folder)))


if __name__ == "__main__":
    main()
