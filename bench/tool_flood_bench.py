#!/usr/bin/env python3
"""Agent RSS while `amd-smi metric --json` prints a flood (issue 12, item 6).

A fake amd-smi on PATH answers every command from the healthy 8x MI300X fixture, except `metric`, which
prints SIZE MB of valid amd-smi JSON (the fixture's GPU entries repeated, as a watch-mode capture looks).
The agent's GPU collector (the real runner, backend amd-smi) reads it every INTERVAL seconds for SECONDS;
the agent's RSS is sampled every second. Run it against any checkout with PYTHONPATH:

    PYTHONPATH=/path/to/checkout .venv/bin/python bench/tool_flood_bench.py --seconds 70 --interval 5 --size-mb 50 \\
        [--kind json|text]
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "fixtures" / "nodes" / "mi300x-rocm71-healthy" / "amd-smi"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_fake(tmp: Path, size_mb: int, kind: str) -> None:
    if kind == "json":
        entries = json.loads((FIXTURE / "metric.json").read_text())["gpu_data"]
        one = len(json.dumps({"gpu_data": entries}, indent=4))  # one repetition of the 8 GPUs, as printed
        flood = entries * max(1, round(size_mb * 1_000_000 / one))
        (tmp / "flood.json").write_text(json.dumps({"gpu_data": flood}, indent=4) + "\n")
    else:  # a tool printing a log line over and over (no JSON at all)
        line = "amdsmi: WARNING: retrying gpu_metrics read on GPU 3 (AMDSMI_STATUS_RETRY)\n"
        (tmp / "flood.json").write_text(line * (size_mb * 1_000_000 // len(line)))
    tool = tmp / "amd-smi"
    tool.write_text(f'#!/bin/sh\nif [ "$1" = metric ]; then exec cat "{tmp}/flood.json"; fi\n'
                    f'exec cat "{FIXTURE}/$1.json"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=70)
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--kind", choices=["json", "text"], default="json", help="valid amd-smi JSON, or log lines")
    args = ap.parse_args()

    from agent.base.collector import Context
    from agent.base.config import Expectations
    from agent.base.roots import Roots
    from agent.run.loop import Agent
    from agent.sources.gpu.collector import GpuCollector, GpuSettings

    with tempfile.TemporaryDirectory(prefix="vigil-flood-") as d:
        tmp = Path(d)
        make_fake(tmp, args.size_mb, args.kind)
        os.environ["PATH"] = f"{tmp}{os.pathsep}{os.environ['PATH']}"
        flood_bytes = (tmp / "flood.json").stat().st_size
        ctx = Context(Roots(Path("/nonexistent/sys"), Path("/nonexistent/proc")), "bench", Expectations(gpus=8))
        settings = GpuSettings(backend="amd-smi", interval_seconds=args.interval, timeout_seconds=30,
                               smi_timeout_seconds=25)
        before = rss_mib()
        agent = Agent([GpuCollector(settings, ctx)], "bench")
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append(rss_mib())

        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        agent.start()
        time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
        stop.set()
        body = agent.metrics().decode()
        agent.stop()
    success = [line for line in body.splitlines() if line.startswith('vigil_collector_success{collector="gpu"}')]
    print(f"python {sys.version.split()[0]}, agent code from {Path(sys.modules['agent'].__file__).parent.parent}")
    print(f"metric output {flood_bytes / 1e6:.1f} MB ({args.kind}) every {args.interval:g} s for {args.seconds:g} s")
    print(f"RSS before the agent started: {before:.1f} MiB")
    print(f"RSS peak: {max(samples):.1f} MiB, at the end: {samples[-1]:.1f} MiB ({len(samples)} samples)")
    print(f"last cycle: {success[0] if success else 'no vigil_collector_success series'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
