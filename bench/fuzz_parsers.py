"""A longer fuzz run of every parser (issue 12, item 4): the property tests' targets (tests/*/test_properties.py,
inputs mutated from the real fixtures) with many more examples, and a table of what came out.

    .venv/bin/python bench/fuzz_parsers.py [--examples 5000] [--seed 12] [--only kmsg]

escapes: exceptions that left a parser (the parser raised on its input); violations: a property that did not
hold (an impossible value returned, or a field the change did not touch parsed differently). Both must be 0.
Exit status 1 when either is not, with the first failing input of each target printed.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODULES = ("tests.gpu.test_properties", "tests.gpu_events.test_properties", "tests.rdma.test_properties",
           "tests.containers.test_properties", "tests.netflow.test_properties",
           # issue 17's node checks: NPD rule files and kmsg line matching, /proc/mounts, AER files, nvme smart-log
           "tests.kernel.test_properties", "tests.mounts.test_properties", "tests.pcie.test_properties",
           "tests.nvme.test_properties")


def run(name: str, strategy, check, examples: int, rng_seed: int) -> dict:
    stats = {"tried": 0, "escapes": 0, "violations": 0, "first": None}

    @seed(rng_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def target(sample):
        stats["tried"] += 1
        try:
            check(sample)
        except AssertionError as e:
            stats["violations"] += 1
            stats["first"] = stats["first"] or f"violation: {e!s:.300} on {sample!r:.300}"
        except Exception as e:  # noqa: BLE001 - an escape is what we count
            stats["escapes"] += 1
            stats["first"] = stats["first"] or f"escape: {type(e).__name__}: {e!s:.300} on {sample!r:.300}"

    started = time.monotonic()
    target()
    stats["seconds"] = time.monotonic() - started
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=5000, help="inputs per parser (default 5000)")
    p.add_argument("--seed", type=int, default=12, help="the run's seed: the same seed tries the same inputs")
    p.add_argument("--only", help="run only the targets whose name contains this")
    a = p.parse_args()
    rows = []
    for module in MODULES:
        for name, (strategy, check) in importlib.import_module(module).TARGETS.items():
            if a.only and a.only.lower() not in name.lower():
                continue
            stats = run(name, strategy, check, a.examples, a.seed)
            rows.append((name, stats))
            print(f"{name}: {stats['tried']} inputs, {stats['escapes']} escapes, {stats['violations']} violations, "
                  f"{stats['seconds']:.1f}s", file=sys.stderr)
    print("| parser | inputs tried | escapes | violations | seconds |")
    print("|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['tried']} | {s['escapes']} | {s['violations']} | {s['seconds']:.1f} |")
    failed = [(name, s["first"]) for name, s in rows if s["escapes"] or s["violations"]]
    for name, first in failed:
        print(f"\n{name}: {first}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
