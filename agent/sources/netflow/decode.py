"""Pure decoders of bpf/tcpflow.c's map entries (raw bytes in, plain tuples out) and the payload arithmetic
that both the kernel program and the live-socket path apply. Keep the layouts in step with the C structs;
tests/netflow/test_decode.py packs entries by hand, the root tests check them against the running kernel."""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

# Histogram bounds of vigil_tcp_rtt_seconds, microseconds (rtt_observe() in bpf/tcpflow.c); one more slot
# beyond the last bound holds the rest.
RTT_BOUNDS_US = (25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
                 500_000, 1_000_000, 2_500_000)
RTT_BUCKETS = len(RTT_BOUNDS_US) + 1

# counters[] slots (C_* in bpf/tcpflow.c).
COUNTERS = ("records", "records_lost", "agg_closes", "agg_overflow", "storage_fail", "orphan_closes", "live_overflow")

DIR_ACTIVE, DIR_PASSIVE, DIR_UNKNOWN = 0, 1, 2
DIRECTIONS = ("egress", "ingress")  # active opens leave the host, passive ones arrive
REC_ORPHAN = 1

# TCP states (include/net/tcp_states.h).
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, \
    CLOSING = range(1, 12)

_CLASS_STATS = struct.Struct(f"<7Q{RTT_BUCKETS}Q")
_AGG_KEY = struct.Struct("<IIQ")
_TOTALS = struct.Struct("<4Q")
_RECORD = struct.Struct("<4QQIBBBB")
_SK_STATE = struct.Struct("<QIIBBBBB3xI4x")  # ... listed, then slot (u32) and the tail padding
SK_STATE_SIZE = _SK_STATE.size
_LIVE = struct.Struct("<QQBBBxHH16s16s")
LIVE_SLOT = 8 + _LIVE.size  # struct live_slot: the cookie (0 free, LIVE_BUSY being written), then a live_sock
LIVE_BUSY = 0xFFFFFFFFFFFFFFFF


class Totals(NamedTuple):
    sent: int = 0
    received: int = 0
    retrans: int = 0
    segs_out: int = 0

    def minus(self, base: Totals) -> Totals:
        """Growth since `base`, never negative (a counter of one socket or one map slot only grows)."""
        return Totals(*(max(0, a - b) for a, b in zip(self, base)))

    def plus(self, other: Totals) -> Totals:
        return Totals(*(a + b for a, b in zip(self, other)))

    def at_least(self, other: Totals) -> Totals:
        return Totals(*(max(a, b) for a, b in zip(self, other)))


class ClassStats(NamedTuple):
    opens: tuple[int, int]  # egress, ingress
    connect_failed: int
    closes: tuple[int, int]
    rtt_sum_us: int
    rtt_count: int
    rtt_buckets: tuple[int, ...]  # per bucket, not cumulative


class Record(NamedTuple):
    """A socket that closed while user space may have counted part of it (drained from `records`)."""

    cookie: int
    totals: Totals
    cgroup: int
    srtt_us: int
    cls: int
    dir: int
    flags: int
    oldstate: int


class SkState(NamedTuple):
    """A socket's storage (struct sk_state), as inet_diag returns it with INET_DIAG_REQ_SK_BPF_STORAGES."""

    cgroup: int
    gen_open: int
    cls: int
    dir: int
    tracked: bool
    listed: bool = False


class LiveKey(NamedTuple):
    """An open socket from the `live` map: where to look it up with inet_diag."""

    cookie: int
    netns: int
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    cls: int = 0
    dir: int = DIR_UNKNOWN
    cgroup: int = 0


def percpu_sum(raw: bytes, size: int) -> bytes:
    """A per-CPU map value (one `size`-byte copy per CPU, all 64-bit fields) folded into one copy."""
    n = size // 8
    fields = struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8])
    sums = [sum(fields[i::n]) & 0xFFFFFFFFFFFFFFFF for i in range(n)]
    return struct.pack(f"<{n}Q", *sums)


def class_stats(raw: bytes) -> ClassStats:
    """One class's stats; per-CPU copies are summed first (percpu_sum)."""
    v = _CLASS_STATS.unpack_from(percpu_sum(raw, _CLASS_STATS.size))
    return ClassStats((v[0], v[1]), v[2], (v[3], v[4]), v[5], sum(v[7:]), tuple(v[7:]))  # v[6]: unused


def agg_key(raw: bytes) -> tuple[int, int]:
    cls, _pad, cgroup = _AGG_KEY.unpack_from(raw)
    return cls, cgroup


def totals(raw: bytes) -> Totals:
    return Totals(*_TOTALS.unpack_from(raw))


def record(cookie: int, raw: bytes) -> Record:
    sent, received, retrans, segs, cgroup, srtt, cls, dir_, flags, oldstate = _RECORD.unpack_from(raw)
    return Record(cookie, Totals(sent, received, retrans, segs), cgroup, srtt, cls, dir_, flags, oldstate)


def sk_state(raw: bytes) -> SkState:
    cgroup, gen_open, _fw2_rcv_nxt, cls, dir_, tracked, _fw2, listed, _slot = _SK_STATE.unpack_from(raw)
    return SkState(cgroup, gen_open, cls, dir_, bool(tracked), bool(listed))


def live_key(cookie: int, raw: bytes) -> LiveKey:
    netns, cgroup, family, cls, dir_, lport, rport, laddr, raddr = _LIVE.unpack_from(raw)
    n = 4 if family == socket.AF_INET else 16
    return LiveKey(cookie, netns, family, socket.inet_ntop(family, laddr[:n]), lport,
                   socket.inet_ntop(family, raddr[:n]), rport, cls, dir_, cgroup)


def rtt_bucket(us: int) -> int:
    for i, bound in enumerate(RTT_BOUNDS_US):
        if us <= bound:
            return i
    return len(RTT_BOUNDS_US)


def live_payload(bytes_acked: int, bytes_received: int, state: int, active: bool) -> tuple[int, int]:
    """Payload bytes (sent and acknowledged, received) of a live socket from tcp_info's counters, which count
    sequence space: bytes_acked holds the SYN of an active open and our FIN once it is acknowledged,
    bytes_received the peer's FIN. A live socket's state tells which FINs are in (the close path in
    bpf/tcpflow.c does the same from the state it closes from)."""
    fin_out = 1 if state == FIN_WAIT2 else 0  # FIN_WAIT1, CLOSING, LAST_ACK: our FIN not acknowledged yet
    fin_in = 1 if state in (CLOSE_WAIT, LAST_ACK, CLOSING) else 0
    sent = bytes_acked - (1 if active else 0) - fin_out
    return max(0, sent), max(0, bytes_received - fin_in)
