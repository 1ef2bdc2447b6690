"""Helpers of the netflow tests: TCP connections with known byte counts (loopback, IPv6, and across a network
namespace pair the tests create), a cgroup to put a client in, and readers of the collector's metrics."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.base.collector import Context, Facts
from agent.sources.netflow.collector import NetflowCollector, NetflowSettings
from agent.base.config import Expectations, build
from agent.base.metrics import MetricSet
from agent.sources.netflow.inet_diag import setns
from agent.base.roots import Roots

REPO = Path(__file__).resolve().parents[2]

# The namespace pair: addresses in the benchmarking range (RFC 2544), on the test's own veths only.
HOST4, POD4 = "198.18.77.1", "198.18.77.2"
HOST6, POD6 = "fd00:7669:6769::1", "fd00:7669:6769::2"


def peer_classes(v6_port: int) -> tuple[dict[str, list[str]], dict[int, str]]:
    """Peer classes no other traffic on this machine falls into, so the tests can assert exact deltas while
    other test sessions use the loopback."""
    classes = {f"t{n}_{end}": [f"127.77.{n}.{1 if end == 'srv' else 2}/32"] for n in range(1, 6)
               for end in ("srv", "cli")}
    classes["pod_network"] = [f"{POD4}/32", f"{POD6}/128"]
    classes["t_host"] = [f"{HOST4}/32", f"{HOST6}/128"]
    return classes, {v6_port: "t6"}


def make_collector(section: dict, facts: Facts | None = None) -> NetflowCollector:
    settings = build(NetflowSettings, {"host_addresses_class": "", "timeout_seconds": 20.0, **section}, "netflow")
    ctx = Context(roots=Roots(), node="test-node", expect=Expectations(), facts=facts or Facts())
    return NetflowCollector(settings, ctx)


class Scrape:
    """One read + evaluate of a collector: its metrics and findings."""

    def __init__(self, collector: NetflowCollector, previous=None):
        from agent.base.collector import Observation

        self.reading = collector.read()
        out = collector.evaluate(self.reading, previous, 1.0 if previous else None)
        self.observation = Observation.now(self.reading)
        self.metrics: MetricSet = out.metrics
        self.findings = out.findings

    def total(self, name: str, **labels) -> float:
        """Sum of the samples of `name` matching `labels` (0 when none)."""
        out = 0.0
        for fam in self.metrics:
            for sname, slabels, v in fam.samples:
                if sname == name and all(slabels.get(k) == str(val) for k, val in labels.items()):
                    out += v
        return out

    def finding(self, check: str, entity: str):
        found = [f for f in self.findings if f.check == check and f.entity == entity]
        assert len(found) == 1, (check, entity, self.findings)
        return found[0]


def delta(after: Scrape, before: Scrape, name: str, **labels) -> int:
    return int(after.total(name, **labels) - before.total(name, **labels))


def flow(after: Scrape, before: Scrape, cls: str, **labels) -> tuple[int, int]:
    return (delta(after, before, "vigil_tcp_flow_sent_bytes_total", peer_class=cls, **labels),
            delta(after, before, "vigil_tcp_flow_received_bytes_total", peer_class=cls, **labels))


def conns(after: Scrape, before: Scrape, direction: str, cls: str) -> int:
    return delta(after, before, "vigil_tcp_connections_total", direction=direction, peer_class=cls)


# -- connections ----------------------------------------------------------------------------------------------
@contextmanager
def in_netns(name: str | None):
    """This thread inside network namespace `name` (sockets created meanwhile stay in it)."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target)
        yield
    finally:
        setns(home)
        os.close(target)
        os.close(home)


def listener(addr: str, port: int = 0, netns: str | None = None) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with in_netns(netns):
        s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    return s


@dataclass
class Conn:
    client: socket.socket
    server: socket.socket

    def up(self, n: int) -> None:
        transfer(self.client, self.server, n)

    def down(self, n: int) -> None:
        transfer(self.server, self.client, n)

    def close(self, first: str = "client") -> None:
        """Graceful close: one side, then the other once it has seen the FIN."""
        a, b = (self.client, self.server) if first == "client" else (self.server, self.client)
        a.close()
        assert b.recv(1) == b""
        b.close()
        time.sleep(0.05)  # let the last ACKs land


def connect(srv: socket.socket, src: str | None = None, netns: str | None = None) -> Conn:
    family, dst = srv.family, srv.getsockname()
    with in_netns(netns):
        c = socket.socket(family, socket.SOCK_STREAM)
    if src:
        c.bind((src, 0))
    c.connect(dst[:2] if family == socket.AF_INET else dst)
    s, _ = srv.accept()
    return Conn(c, s)


def transfer(tx: socket.socket, rx: socket.socket, n: int) -> None:
    got = []
    t = threading.Thread(target=lambda: got.append(recv_exactly(rx, n)))
    t.start()
    tx.sendall(b"v" * n)
    t.join(20)
    assert got == [n]


def recv_exactly(s: socket.socket, n: int) -> int:
    left = n
    while left:
        chunk = s.recv(min(left, 1 << 16))
        if not chunk:
            break
        left -= len(chunk)
    return n - left


def exchange(srv: socket.socket, up: int, down: int, src: str | None = None, netns: str | None = None,
             first: str = "client") -> None:
    c = connect(srv, src, netns)
    c.up(up)
    c.down(down)
    c.close(first)


# -- a client in another cgroup ---------------------------------------------------------------------------------
CLIENT = r"""
import socket, sys
host, port, src, up, down = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
assert sys.stdin.readline().strip() == "go"
c = socket.socket(); c.bind((src, 0)); c.connect((host, port))
c.sendall(b"u" * up)
left = down
while left:
    left -= len(c.recv(min(left, 65536)))
print("done", flush=True)
assert sys.stdin.readline().strip() == "close"
c.close()
print("closed", flush=True)
"""


class CgroupClient:
    """A client process moved into `cgroup` before it connects: it sends `up` bytes, reads `down`, and closes
    when told to (so a read can see it live first)."""

    def __init__(self, cgroup: Path, srv: socket.socket, src: str, up: int, down: int):
        host, port = srv.getsockname()[:2]
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, host, str(port), src, str(up), str(down)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        (cgroup / "cgroup.procs").write_text(str(self.proc.pid))
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.server, _ = srv.accept()
        self.up, self.down = up, down

    def run(self) -> None:
        assert recv_exactly(self.server, self.up) == self.up
        self.server.sendall(b"d" * self.down)
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"
        assert self.server.recv(1) == b""
        self.server.close()
        self.proc.wait(10)
        time.sleep(0.05)
