"""LoRA swap time against generation time, through the worker's own LoRA code (tiny, CPU).

Measures, on one warm `tiny` model, in one run: a first load of each demo adapter (file → PEFT
layers), a swap between resident adapters (`LoraCache.activate` + `reset`), activating two at once, and the
generation the swap serves (256x256, 12 steps) with and without an active adapter. Prints one table.

    python bench/adapters.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import diffusers.utils.logging as diffusers_logging

    from sdserve.registry import Registry, RegistryHolder
    from sdserve.settings import Settings
    from worker.models.device import DeviceConfig
    from worker.models.pipelines import PipelineCache

    diffusers_logging.set_verbosity_error()
    holder = RegistryHolder(lambda: Registry.load(None, "tiny"))
    registry = holder.current
    with tempfile.TemporaryDirectory() as tmp:
        cache = PipelineCache(holder, DeviceConfig.from_settings(Settings(device="cpu")), Path(tmp))
        model = cache.load("tiny")
        loras = model.loras
        assert loras is not None
        for name in ("tiny-detail", "tiny-kohya"):
            cache.resolve_file(registry.lora(name).file)  # generate the files outside the timings
        rows: dict[str, list[float]] = {}

        first = []
        for name in ("tiny-detail", "tiny-kohya"):
            started = time.perf_counter()
            loras.activate([(registry.lora(name), 1.0)])
            loras.reset()
            first.append(time.perf_counter() - started)
        rows["first load of an adapter (file → layers)"] = first

        def generate() -> None:
            model.view("euler")(
                "a lighthouse at dusk",
                width=256,
                height=256,
                num_inference_steps=12,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
            )

        swaps, pairs, base, lora = [], [], [], []
        for i in range(args.repeats):
            name = ("tiny-detail", "tiny-kohya")[i % 2]
            started = time.perf_counter()
            loras.activate([(registry.lora(name), 0.8)])
            loras.reset()
            swaps.append(time.perf_counter() - started)
            started = time.perf_counter()
            loras.activate([(registry.lora("tiny-detail"), 1.0), (registry.lora("tiny-kohya"), 0.5)])
            loras.reset()
            pairs.append(time.perf_counter() - started)
        for _ in range(max(3, args.repeats // 4)):
            started = time.perf_counter()
            generate()
            base.append(time.perf_counter() - started)
            loras.activate([(registry.lora("tiny-detail"), 1.0)])
            started = time.perf_counter()
            generate()
            lora.append(time.perf_counter() - started)
            loras.reset()
        rows["swap to a resident adapter (activate + reset)"] = swaps
        rows["activate two resident adapters (+ reset)"] = pairs
        rows["generation 256x256, 12 steps, no adapter"] = base
        rows["generation 256x256, 12 steps, one adapter (unfused)"] = lora

    print(
        f"tiny on the CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}; "
        f"{args.repeats} swaps"
    )
    print(f"| {'what':52} | p50 ms | p95 ms | mean ms |")
    print(f"|{'-' * 54}|-------:|-------:|--------:|")
    for label, values in rows.items():
        print(
            f"| {label:52} | {pct(values, 0.5) * 1000:6.1f} | {pct(values, 0.95) * 1000:6.1f} | "
            f"{statistics.mean(values) * 1000:7.1f} |"
        )
    swap_ms = pct(swaps, 0.5) * 1000
    gen_ms = pct(base, 0.5) * 1000
    print(
        f"\nA swap costs {swap_ms:.1f} ms, {100 * swap_ms / gen_ms:.1f} % of the {gen_ms:.0f} ms generation it serves."
    )


if __name__ == "__main__":
    main()
