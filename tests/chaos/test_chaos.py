"""Chaos, short: jobs go in through a real gateway while a worker is SIGKILLed mid-job, another is stalled
mid-job, clocks disagree, and Redis restarts.

The scenario is ``bench/chaos.py`` (the long version runs 200 jobs for two minutes; see its docstring and
``docs/benchmarks.md``), run here small: 20 tiny jobs over 12 s, two ``sdserve worker`` processes, one
kill of a worker while it runs a job, one stall (SIGSTOP of a busy worker for longer than its presence
lives and the janitor's sweep, then SIGCONT), one graceful Redis restart, the dispatcher's (janitor's) wall
clock ten minutes ahead and the first worker's five behind, then a drain. Everything is a real
subprocess (its own ``redis-server`` with ``--appendonly yes --appendfsync always``, the gateway, the
webhook dispatcher that also runs the janitor, the workers). The ledger of accepted jobs must reconcile:
none lost, none with two sets of results or two terminal events, none left queued or running; and the job
that was running when its worker died must have been put back in the queue by the janitor and finished;
the stalled worker's job must have been rerun elsewhere, and when the zombie woke up it must not have
touched the rerun: every succeeded job's files are in the store and no run's progress went backwards.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def load_chaos() -> ModuleType:
    """``bench/chaos.py`` as a module (``bench`` is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("sdserve_bench_chaos", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the body runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_no_accepted_job_is_lost_duplicated_or_stuck(tmp_path: Path, models_cache: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("the chaos test starts its own redis-server, and none is installed")
    chaos = load_chaos()
    options = chaos.Options(
        jobs=20,
        duration=12,
        workers=2,
        kill_every=(0.0, 0.0),  # no random kills: one targeted kill, mid-job
        targeted_kills=1,
        redis_restarts=1,
        stalls=1,
        stall_seconds=26,  # > presence (4 beats of 1 s + 10 s) + a janitor sweep (10 s): the job is given away
        skew_seconds=600,
        drain_seconds=90,
        models_cache=models_cache,
        verbose=False,
    )
    report = chaos.run(options, tmp_path)
    summary = report.table() + "".join(f"\n- {p}" for p in report.problems) + f"\n(logs in {tmp_path / 'logs'})"

    assert report.accepted == options.jobs, summary
    assert (report.lost, report.duplicated, report.stuck) == (0, 0, 0), summary
    assert (report.missing_files, report.progress_backwards) == (0, 0), summary
    assert report.stalls == 1 and report.stalled_requeued == 1, summary  # the stalled job was rerun elsewhere
    assert report.succeeded + report.failed_worker_lost == options.jobs, summary
    assert report.redis_restarts == 1, summary
    assert report.kills_mid_job == 1, summary  # the kill hit a worker while its job was running...
    assert report.victims_requeued == len(report.mid_job_victims) == 1, summary  # ...the janitor requeued its job
    assert report.kill_to_requeue[0] < 60, summary  # (issue 7: a dead worker's job is detected within 60 s)
    assert report.requeues >= 1, summary
