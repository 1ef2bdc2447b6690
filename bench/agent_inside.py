"""The agent (`python -m agent.cli ARGS`) with a window into its own memory, for agent_cost_bench.py (issue 15).

    python bench/agent_inside.py DUMP.json AGENT-ARGS...

On SIGUSR1 it writes DUMP.json: Python's allocated blocks (sys.getallocatedblocks), the threads, the modules
loaded (sys.modules), and, when tracemalloc runs (PYTHONTRACEMALLOC=1 in the environment; it costs memory of
its own, so the RSS figures come from a run without it), the traced total and the largest allocation sites."""
from __future__ import annotations

import json
import signal
import sys
import threading
import tracemalloc
from pathlib import Path


def dump(path: Path) -> None:
    out: dict = {"allocated_blocks": sys.getallocatedblocks(),
                 "threads": sorted(t.name for t in threading.enumerate()),
                 "modules": sorted(sys.modules)}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        current, peak = tracemalloc.get_traced_memory()
        out["traced_bytes"], out["traced_peak_bytes"] = current, peak
        out["top_files"] = [{"file": s.traceback[0].filename, "bytes": s.size, "blocks": s.count}
                            for s in snap.statistics("filename")[:25]]
        out["top_lines"] = [{"at": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "bytes": s.size,
                             "blocks": s.count} for s in snap.statistics("lineno")[:25]]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.rename(path)


def main() -> int:
    path = Path(sys.argv[1])
    signal.signal(signal.SIGUSR1, lambda *_: dump(path))  # runs in the main thread, which waits in cmd_serve
    from agent.cli import main as agent_main

    return agent_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
