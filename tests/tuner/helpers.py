"""Helpers of the tuner tests: a temporary procfs tree, a collector built from a config mapping, and a child
process that joins a network namespace (netns_child.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.base.collector import Context, RunMode
from agent.sources.tuner.collector import SysctlCollector, SysctlSettings
from agent.base.config import Expectations, build
from agent.base.roots import Roots

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("netns_child.py")
AGENT = REPO / ".venv" / "bin" / "agent"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces); CI runs as root")
needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")


def make_procfs(root: Path, values: dict[str, str]) -> Path:
    """A procfs tree holding sys/<key as path> files, as the kernel prints them."""
    for key, text in values.items():
        path = root.joinpath("sys", *key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def read_procfs(root: Path, key: str) -> str:
    return root.joinpath("sys", *key.split(".")).read_text().strip()


def collector(section: dict, procfs: Path, *, limits=None, **mode) -> SysctlCollector:
    """A sysctl collector from a config section, validated the way the agent's config loader does it. File
    limits default to none, so no test touches a real daemon by accident."""
    settings = build(SysctlSettings, {"file_limits": {}, **section}, "sysctl")
    ctx = Context(roots=Roots(procfs=procfs), node="test-node", expect=Expectations(),
                  mode=RunMode(**mode))
    return SysctlCollector(settings, ctx, limits=limits)


def one_pass(c: SysctlCollector):
    reading = c.read()
    return reading, c.evaluate(reading, None, None)


def by_check(findings, check: str) -> dict:
    return {f.entity: f for f in findings if f.check == check}


HOST_NET_KEYS = ["net.core.somaxconn", "net.core.rmem_max", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
                 "net.ipv4.tcp_congestion_control"]


def in_netns(name: str, spec: dict) -> dict:
    """Run netns_child.py: it joins the namespace with os.setns and runs the tuner against /proc there."""
    proc = subprocess.run([sys.executable, str(CHILD), name, json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc.update(stdout=proc.stdout, stderr=proc.stderr)
    return doc
