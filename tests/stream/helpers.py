"""Shared pieces of the stream tests: a real aggregator replica on loopback (no Kubernetes API: it decides
without acting) that records what it applied, stream clients on it, and real filesystem faults (root): a tmpfs
of a given size (a full disk), a read-only bind mount. Mounts are undone by the fixtures' teardown."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

from agent.aggregator.app import Replica, ReplicaOptions, ReplicaThread
from agent.aggregator.engine import AggregatorConfig
from agent.base.collector import Output
from agent.run.runner import Result
from agent.stream.client import StreamClient, StreamSettings


def wait_for(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Applied:
    """What a replica applied: (epoch, seq) in order, and each applied event's (kind, check, entity, status)."""

    def __init__(self, r: ReplicaThread) -> None:
        self.seqs: list[tuple[str, int]] = []
        self._events: dict[tuple[str, int], tuple[str, str, str, int]] = {}
        engine = r.replica.engine
        engine.applied_hooks.append(lambda node, boot, epoch, seqs: self.seqs.extend((epoch, s) for s in seqs))
        batch = engine.batch

        def spy(node, epoch, boot_id, events, *args, **kw):  # every event received, by (epoch, seq)
            events = list(events)
            for e in events:
                self._events.setdefault((epoch, e.seq), (e.kind, e.check, e.entity, e.status))
            return batch(node, epoch, boot_id, events, *args, **kw)
        engine.batch = spy

    def __len__(self) -> int:
        return len(self.seqs)

    def __iter__(self):
        return iter(self.seqs)

    def __eq__(self, other) -> bool:
        return self.seqs == other

    def events(self) -> list[tuple[str, str, str, int]]:
        """Every applied event's (kind, check, entity, status), duplicates across epochs included."""
        return [self._events[k] for k in self.seqs]

    def entities(self, check: str) -> list[str]:
        return [e[2] for e in self.events() if e[1] == check]


def replica(port=0):
    r = ReplicaThread(Replica(AggregatorConfig(identity="t", heartbeat_seconds=1),
                              ReplicaOptions(listen=f"127.0.0.1:{port}", use_lease=False, auth=False), None))
    return r, Applied(r)


def settings(spool, port, **kw):
    kw.setdefault("heartbeat_seconds", 1)
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return StreamSettings([f"127.0.0.1:{port}"], str(spool), **kw)


def client(tmp_path, port, **kw):
    return StreamClient(settings(Path(tmp_path) / "spool.db", port, **kw), "n1", "boot-1")


def gpu(*findings, success=True):
    return Result("gpu", Output(findings=list(findings)), success, 0.01)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A real filesystem of `size` at `path` (a full disk after that many bytes)."""
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class ReadOnly:
    """`path` bind-mounted on itself, switchable read-only / read-write (chmod does not stop root)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", str(path), str(path))

    def ro(self) -> None:
        sh("mount", "-o", "remount,ro,bind", str(self.path))

    def rw(self) -> None:
        sh("mount", "-o", "remount,rw,bind", str(self.path))

    def close(self) -> None:
        # a mount can be stacked (a remount raced a retry): undo every layer, or pytest cannot remove the dir
        for _ in range(8):
            if subprocess.run(["mountpoint", "-q", str(self.path)]).returncode != 0:
                break
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
