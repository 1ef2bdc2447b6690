"""Child process for the namespace tests: join a network namespace with setns(2), then run the real tuner (or
the real `agent` CLI) against /proc, whose sys/net now shows that namespace's values.

usage: netns_child.py NETNS SPEC_JSON
SPEC: {"kind": "passes" | "cli", "config": {sysctl section}, "mode": {RunMode fields}, "passes": N, "argv": [...],
       "read": [keys to read before and after]}
Prints, as its last line, one JSON object: before, after, passes (findings and metric samples of each pass),
warnings (log lines at WARNING and above), exit (the CLI's exit status).
"""
from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path


CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    """os.setns exists from Python 3.12; on 3.11 call libc's setns(2) the same way."""
    if hasattr(os, "setns"):
        os.setns(fd, os.CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def read(keys: list[str]) -> dict[str, str | None]:
    out = {}
    for k in keys:
        try:
            out[k] = Path("/proc/sys", *k.split(".")).read_text().strip()
        except OSError:
            out[k] = None
    return out


def main() -> int:
    name, spec = sys.argv[1], json.loads(sys.argv[2])
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    setns(fd)  # from here on, /proc/sys/net is the namespace's
    os.close(fd)

    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    keys = spec.get("read", [])
    doc: dict = {"before": read(keys), "passes": [], "warnings": warnings, "exit": None}
    if spec.get("kind") == "cli":
        from agent.cli import main as agent_main

        buf = io.StringIO()
        with redirect_stdout(buf):
            doc["exit"] = agent_main(spec["argv"])
        print(buf.getvalue())
    else:
        from agent.base.collector import Context, RunMode
        from agent.sources.tuner.collector import SysctlCollector, SysctlSettings
        from agent.base.config import Expectations, build
        from agent.base.roots import Roots

        handler = Keep(level=logging.WARNING)
        logging.getLogger("agent").addHandler(handler)
        # No file limits unless the spec names some: a test must never prlimit a real daemon.
        settings = build(SysctlSettings, {"file_limits": {}, **spec["config"]}, "sysctl")
        mode = RunMode(**spec.get("mode", {}))
        c = SysctlCollector(settings, Context(Roots(procfs=Path("/proc")), "netns", Expectations(), mode=mode))
        for _ in range(spec.get("passes", 1)):
            out = c.evaluate(c.read(), None, None)
            doc["passes"].append({
                "findings": [f.to_json() for f in out.findings],
                "metrics": [[s, labels, v] for fam in out.metrics for s, labels, v in fam.samples],
            })
    doc["after"] = read(keys)
    print(json.dumps(doc, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
