"""Peer classes: which kind of peer a TCP connection talks to, from a policy of CIDRs and ports of interest.

The same policy runs in two places and must agree: here (live sockets, tests, the top view) and in the kernel
(bpf/tcpflow.c, filled from `kernel_entries()`). The rule, in order:
  1. the remote port, then the local port, is a port of interest -> that port's class (storage, dns, ...);
  2. the longest CIDR prefix holding the peer address -> that CIDR's class;
  3. otherwise the fallback class ("external").
Exported series carry the class, never the address, so cardinality stays bounded whatever the traffic.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_CLASSES = 32  # the kernel's per-class arrays (MAX_CLASSES in bpf/tcpflow.c)
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A bad policy; the message names the offending entry."""


@dataclass(frozen=True)
class PeerPolicy:
    names: tuple[str, ...]  # index = class id; names[0] is the fallback
    cidrs: tuple[tuple[Network, int], ...]  # (network, class id), any order
    ports: Mapping[int, int] = field(default_factory=dict)  # port -> class id

    @classmethod
    def build(cls, classes: Mapping[str, Iterable[str]], ports: Mapping[int, str], fallback: str = "external",
              extra: Mapping[str, Iterable[str]] | None = None) -> PeerPolicy:
        """`classes`: class name -> CIDRs; `ports`: port -> class name; `extra`: more CIDRs per class (the
        node's own addresses), merged after `classes`."""
        names = [fallback]
        ids: dict[str, int] = {fallback: 0}

        def class_id(name: str, where: str) -> int:
            if not NAME.match(name):
                raise PolicyError(f"{where}: class name {name!r} must match {NAME.pattern}")
            if name not in ids:
                if len(names) >= MAX_CLASSES:
                    raise PolicyError(f"{where}: more than {MAX_CLASSES} classes")
                ids[name] = len(names)
                names.append(name)
            return ids[name]

        cidrs: dict[Network, int] = {}
        for source in (classes, extra or {}):
            for name, nets in source.items():
                cid = class_id(name, f"classes.{name}")
                for text in nets:
                    try:
                        net = ipaddress.ip_network(str(text), strict=False)
                    except ValueError as e:
                        raise PolicyError(f"classes.{name}: {e}") from None
                    cidrs.setdefault(net, cid)  # the first class to claim a network keeps it
        port_ids: dict[int, int] = {}
        for port, name in ports.items():
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise PolicyError(f"ports.{port}: a port is an integer within 1..65535")
            port_ids[port] = class_id(name, f"ports.{port}")
        return cls(tuple(names), tuple(cidrs.items()), port_ids)

    def name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else self.names[0]

    def classify(self, peer: str | ipaddress.IPv4Address | ipaddress.IPv6Address, remote_port: int = 0,
                 local_port: int = 0) -> int:
        """Class id of a peer, by the rule in the module docstring (IPv4-mapped IPv6 counts as IPv4)."""
        for port in (remote_port, local_port):
            cid = self.ports.get(port)
            if cid is not None:
                return cid
        addr = ipaddress.ip_address(peer) if isinstance(peer, str) else peer
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        best, best_len = 0, -1
        for net, cid in self.cidrs:
            if net.version == addr.version and net.prefixlen > best_len and addr in net:
                best, best_len = cid, net.prefixlen
        return best

    def kernel_entries(self) -> tuple[list[tuple[int, bytes, int]], list[tuple[int, int]]]:
        """What bpf/tcpflow.c's maps hold: LPM entries (prefix length, 16 address bytes, class id), IPv4 as
        ::ffff:a.b.c.d/96+len; and (port, class id)."""
        lpm = []
        for net, cid in self.cidrs:
            if net.version == 4:
                lpm.append((96 + net.prefixlen, b"\0" * 10 + b"\xff\xff" + net.network_address.packed, cid))
            else:
                lpm.append((net.prefixlen, net.network_address.packed, cid))
        return lpm, sorted(self.ports.items())

    def to_json(self) -> dict:
        return {"names": list(self.names), "cidrs": [[str(n), c] for n, c in self.cidrs],
                "ports": [[p, c] for p, c in sorted(self.ports.items())]}

    @classmethod
    def from_json(cls, doc: Mapping) -> PeerPolicy:
        return cls(tuple(doc["names"]), tuple((ipaddress.ip_network(n), int(c)) for n, c in doc["cidrs"]),
                   {int(p): int(c) for p, c in doc["ports"]})


def host_networks(addresses: Iterable[str]) -> list[str]:
    """The node's own addresses as /32 and /128 networks (link-local IPv6 zone suffixes dropped)."""
    out = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
        except ValueError:
            continue
        out.append(f"{ip}/{ip.max_prefixlen}")
    return out


def local_addresses() -> list[str]:
    """Addresses on this network namespace's interfaces (psutil)."""
    import socket

    import psutil

    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.append(a.address)
    return out
