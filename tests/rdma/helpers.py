"""Helpers for the RDMA tests: build a collector on a fixture node (or a copy of one) and run it."""
from __future__ import annotations

import shutil
from pathlib import Path

from agent.base.collector import Context, Observation
from agent.sources.rdma.collector import RdmaCollector, RdmaSettings
from agent.base.config import Expectations
from agent.base.findings import Finding
from agent.base.roots import Roots, read_node_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "nodes"
RDMA_NODES = sorted(p.name for p in FIXTURES.glob("rdma-*") if (p / "sys").is_dir())
AGENT = str(ROOT / ".venv" / "bin" / "agent")
IB = ("sys", "class", "infiniband")


def node_dir(name: str) -> Path:
    return FIXTURES / name


def collector(directory: Path, expect: int | None | str = "node.json", live: bool = False, watcher=None,
              netlink=None, **settings) -> RdmaCollector:
    """A collector on a snapshot dir. live=True reads the same tree as if it were the host's /sys (no
    snapshot): the hot-plug and netlink paths then run."""
    if live:
        roots = Roots(sysfs=directory / "sys", procfs=directory / "proc")
    else:
        roots = Roots.from_snapshot(directory)
    if expect == "node.json":
        nf = read_node_file(directory / "node.json")
        expectations, node = nf.expect, nf.node or directory.name
    else:
        expectations, node = Expectations(rdma_ports=expect), directory.name  # type: ignore[arg-type]
    return RdmaCollector(RdmaSettings(**settings), Context(roots, node, expectations), watcher=watcher,
                         netlink=netlink)


def copy_node(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(node_dir(name), target, symlinks=True)
    return target


def read(name: str, **kw):
    return collector(node_dir(name), **kw).read()


def run(c: RdmaCollector, previous=None, elapsed: float | None = None):
    """read + evaluate, as the runner does; returns (reading, output)."""
    reading = c.read()
    prev = Observation(previous, 0.0) if previous is not None else None
    return reading, c.evaluate(reading, prev, elapsed)


def by(findings: list[Finding], check: str, entity: str | None = None) -> list[Finding]:
    return [f for f in findings if f.check == check and (entity is None or f.entity == entity)]


def one(findings: list[Finding], check: str, entity: str) -> Finding:
    found = by(findings, check, entity)
    assert len(found) == 1, f"{check} {entity}: {found}"
    return found[0]


def problems(findings: list[Finding]) -> list[tuple[str, str, str, str]]:
    return sorted((f.check, f.entity, f.status, f.severity) for f in findings if f.status != "ok")
