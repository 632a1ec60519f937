"""The Grafana dashboard is built on metrics sdserve really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sdserve.observe.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def test_every_panel_queries_an_exported_metric() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "sdserve-dashboard.json").read_text())
    exported = set()
    for metric in Metrics().registry.collect():  # every metric any sdserve process exports
        for s in metric.samples:
            exported.add(s.name)
        exported.add(metric.name)
    names = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(sdserve_[a-z_]+)", target["expr"])
    }
    assert names, "the dashboard queries nothing"

    def known(name: str) -> bool:
        return any(name.removesuffix(suffix) in exported for suffix in ("", "_total", "_bucket", "_count", "_sum"))

    missing = {n for n in names if not known(n)}
    assert missing == set()
    assert len(dashboard["panels"]) >= 12
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
