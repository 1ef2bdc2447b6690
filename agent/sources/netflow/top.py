"""`python -m agent.sources.netflow.top`: the heaviest live TCP flows on this node, for a person debugging it.

    python -m agent.sources.netflow.top [--config FILE] [-n 20] [--interval 1] [--total] [--host-only]

Reads live sockets twice through inet_diag, `--interval` seconds apart, in every network namespace (root), and
ranks them by payload bytes moved in between (`--total`: over their lifetime). Each row shows the peer class
from the `netflow` section of the agent's configuration, the owning process and cgroup, and the addresses:
unlike the exported metrics, this view is for one person on one node, so it names peers. It loads no BPF and
runs beside the agent without disturbing it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from agent.base.config import number_flag
from . import decode, inet_diag
from .accounting import _endpoint
from .policy import PeerPolicy, local_addresses
from .probe import CgroupIndex, cgroup2_mount

STATE_NAMES = {1: "ESTAB", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 8: "CLOSE_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


class Row(NamedTuple):
    peer_class: str
    direction: str
    state: str
    local: str
    peer: str
    sent: int
    received: int
    rtt_us: int
    retrans: int
    process: str
    cgroup: str


def snapshot(ns: inet_diag.Namespaces) -> tuple[dict[int, tuple[int, inet_diag.LiveSocket]], dict[int, set[int]]]:
    ns.refresh()
    listening: dict[int, set[int]] = {}
    for ino, s in ns.dump(inet_diag.LISTEN_STATES):
        listening.setdefault(ino, set()).add(s.sport)
    return {s.cookie: (ino, s) for ino, s in ns.dump(inet_diag.FLOW_STATES)}, listening


def inode_owners(procfs: Path, inodes: set[int]) -> dict[int, str]:
    """socket inode -> "pid/comm", by walking /proc/*/fd (only for the rows shown)."""
    out: dict[int, str] = {}
    want = {f"socket:[{i}]": i for i in inodes if i}
    if not want:
        return out
    for entry in os.scandir(procfs):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(Path(entry.path) / "fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                ino = want.get(target)
                if ino is not None and ino not in out:
                    try:
                        comm = (Path(entry.path) / "comm").read_text().strip()
                    except OSError:
                        comm = "?"
                    out[ino] = f"{entry.name}/{comm}"
        if len(out) == len(want):
            break
    return out


def rows(policy: PeerPolicy, before: dict, after: dict, listening: dict[int, set[int]], total: bool) -> list[tuple]:
    out = []
    for cookie, (ino, s) in after.items():
        active = s.sport not in listening.get(ino, ())
        sent, received = decode.live_payload(s.bytes_acked or 0, s.bytes_received or 0, s.state, active)
        if not total:
            old = before.get(cookie)
            if old is not None:
                o_sent, o_received = decode.live_payload(old[1].bytes_acked or 0, old[1].bytes_received or 0,
                                                         old[1].state, active)
                sent, received = max(0, sent - o_sent), max(0, received - o_received)
        cls = policy.name(policy.classify(s.dst, s.dport, s.sport))
        out.append((sent + received, s, cls, "egress" if active else "ingress", sent, received))
    out.sort(key=lambda r: r[0], reverse=True)
    return out


def render(table: Iterable[Row]) -> str:
    header = ("PEER_CLASS", "DIR", "STATE", "LOCAL", "PEER", "SENT", "RECEIVED", "RTT", "RETRANS", "PROCESS",
              "CGROUP")
    lines = [header] + [(r.peer_class, r.direction, r.state, r.local, r.peer, _size(r.sent), _size(r.received),
                         f"{r.rtt_us / 1000:.2f}ms", str(r.retrans), r.process, r.cgroup) for r in table]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def load_policy(config: str | None) -> PeerPolicy:
    from .collector import NetflowSettings
    from agent.base.config import load
    from agent.sources import REGISTRY, load as load_source

    # The agent's whole file is valid here (its other sections are checked, then unused).
    schemas = {name: load_source(name).Settings for name in REGISTRY}
    settings = load(config, schemas).section("netflow") if config else NetflowSettings()
    return settings.policy(local_addresses() if settings.host_addresses_class else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.sources.netflow.top", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", metavar="FILE", help="agent configuration (its netflow section's peer classes)")
    p.add_argument("-n", type=number_flag(1, 10_000, integer=True), default=20, help="rows to show (default 20)")
    p.add_argument("--interval", type=number_flag(0, 3600, above=True), default=1.0,
                   help="seconds between the two reads (default 1)")
    p.add_argument("--total", action="store_true", help="rank by lifetime bytes instead of bytes in the interval")
    p.add_argument("--host-only", action="store_true", help="only the host's network namespace")
    args = p.parse_args(argv)
    from agent.base.config import ConfigError

    try:
        policy = load_policy(args.config)
    except ConfigError as e:
        print(f"top: bad configuration: {e}", file=sys.stderr)
        return 78
    ns = inet_diag.Namespaces(all_namespaces=not args.host_only and os.geteuid() == 0)
    try:
        before, _ = snapshot(ns) if not args.total else ({}, {})
        if not args.total:
            time.sleep(args.interval)
        after, listening = snapshot(ns)
    finally:
        ns.close()
    ranked = rows(policy, before, after, listening, args.total)[: args.n]
    owners = inode_owners(Path("/proc"), {r[1].inode for r in ranked})
    cgroups = CgroupIndex(cgroup2_mount())
    table = [Row(cls, direction, STATE_NAMES.get(s.state, str(s.state)), _endpoint(s.src, s.sport),
                 _endpoint(s.dst, s.dport), sent, received, s.rtt_us, s.total_retrans, owners.get(s.inode, "-"),
                 cgroups.path(s.cgroup) or "-")
             for _, s, cls, direction, sent, received in ranked]
    what = "lifetime" if args.total else f"last {args.interval:g}s"
    sys.stdout.write(f"{len(after)} live TCP flows; top {len(table)} by payload bytes ({what})\n\n" + render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
