"""Where the agent reads a node from: the live host, the host mounted under a prefix (the DaemonSet mounts
/sys at /host/sys), or a node snapshot directory (DESIGN §3) replayed for tests and bug reports."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, Expectations, build, check_json_depth, check_node_name, read_text_file

MAX_NODE_FILE_BYTES = 64 << 10  # {"node": ..., "expect": {...}} is under 100 bytes


@dataclass(frozen=True)
class Roots:
    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    snapshot: Path | None = None  # a snapshot dir: GPU backends replay DIR/amd-smi and DIR/nvidia-smi

    @classmethod
    def from_snapshot(cls, directory: str | Path) -> "Roots":
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"snapshot directory {d} does not exist")
        return cls(sysfs=d / "sys", procfs=d / "proc", snapshot=d)

    def sys(self, *parts: str) -> Path:
        return self.sysfs.joinpath(*parts)

    def proc(self, *parts: str) -> Path:
        return self.procfs.joinpath(*parts)

    def show(self, path: Path) -> str:
        """A path as a message names it: relative to the snapshot when replaying one (the same text on every
        machine a snapshot is replayed on), else as it is."""
        if self.snapshot is not None:
            try:
                return str(Path("<snapshot>") / path.relative_to(self.snapshot))
            except ValueError:
                pass
        return str(path)

    def boot_id(self) -> str | None:
        """The kernel's boot id (/proc/sys/kernel/random/boot_id, a new one each boot), None when unreadable.
        The stream tells the aggregator which boot its events belong to; GPU events reset their cursor."""
        try:
            return self.proc("sys", "kernel", "random", "boot_id").read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class NodeFile:
    """DIR/node.json: {"node": "gpu-07", "expect": {"gpus": 8, "rdma_ports": 8}} (all optional)."""

    node: str | None
    expect: Expectations


def read_node_file(path: Path) -> NodeFile:
    """DIR/node.json, checked as a config is (a bad one exits 78 naming the file and the key)."""
    if not path.exists():
        return NodeFile(None, Expectations())
    text = read_text_file(path, MAX_NODE_FILE_BYTES)
    check_json_depth(text, str(path))
    try:
        raw = json.loads(text)
    except ValueError as e:  # JSONDecodeError, and int() of more than 4,300 digits
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object")
    unknown = set(raw) - {"node", "expect"}
    if unknown:
        raise ConfigError(f"{path}: {sorted(unknown)[0][:80]}: unknown key (known: expect, node)")
    node = raw.get("node")
    if node is not None and not isinstance(node, str):
        raise ConfigError(f"{path}: node: expected a string, got {type(node).__name__}")
    if node:
        check_node_name(node, f"{path}: node")
    expect = build(Expectations, {} if raw.get("expect") is None else raw["expect"], f"{path}: expect")
    return NodeFile(node or None, expect)


def merge_expectations(config: Expectations, node_file: Expectations) -> Expectations:
    """Config wins over node.json, key by key."""
    return Expectations(
        gpus=config.gpus if config.gpus is not None else node_file.gpus,
        rdma_ports=config.rdma_ports if config.rdma_ports is not None else node_file.rdma_ports,
        gpu_bus_ids=config.gpu_bus_ids if config.gpu_bus_ids is not None else node_file.gpu_bus_ids,
    )
