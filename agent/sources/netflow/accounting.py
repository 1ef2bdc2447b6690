"""The ledger: probe readings in, cumulative per-class (and per-pod) counters out, each byte counted once.

Where a connection's bytes come from depends on its life (bpf/tcpflow.c, probe.py):

  * Opened and closed between two reads: never seen live. The kernel adds its exact totals at close to the
    aggregate `agg[class, cgroup]`; the ledger adds the growth of each aggregate slot since the last read.
  * Seen live by a read (inet_diag): the ledger counts the growth of the socket's own counters since the last
    time it saw the socket (`live[cookie]`, what it has already counted). When such a socket closes, the kernel
    does not aggregate it: it writes a record (cookie and exact final totals), and the ledger adds
    final - already counted, then forgets the cookie.

Which way a closing socket goes is decided by the kernel alone, so there is no race to lose: each read marks
a generation counter odd before it dumps live sockets and even after (probe.py). A socket goes to `agg` only
if it closes while the mark is even and equal to the mark at its establishment, that is, if no dump could
have seen it. Everything else writes a record. A record whose cookie the ledger never counted adds the full
totals. So a socket read live in one cycle and closed later contributes exactly its final bytes: the live
deltas, then final minus the last live value; and every counter here only grows (per-socket growth is
clamped at zero, aggregate slots are read as deltas, probe restarts start a new epoch of deltas).

Bounded state: `live` holds sockets open now (entries the dumps stop showing are dropped after
LIVE_GRACE_CYCLES reads: sockets opened before the probe had no storage and write no record when they close,
their last moments are lost); `recent` holds the cookies of the last reads' records (a closing socket can still be in
the hash table for a moment after its record is written: a dump that sees it then must not count it again).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .decode import DIR_ACTIVE, DIR_PASSIVE, DIRECTIONS, REC_ORPHAN, RTT_BUCKETS, Totals, rtt_bucket

LIVE_GRACE_CYCLES = 30  # reads a socket may go unseen (a namespace missed once) before it is forgotten
RECENT_CYCLES = 3
PROBE_COUNTERS = ("records_lost", "agg_overflow", "storage_fail", "orphan_closes", "live_overflow")

PodOf = Callable[[int, str | None], tuple[str, str]]  # (cgroup id, cgroup path) -> (namespace, pod)


class Flow(NamedTuple):
    """One live or just-closed socket, for the top-N debug view (never exported as a metric)."""

    peer_class: str
    namespace: str
    pod: str
    direction: str
    sent: int  # payload bytes over the last cycle (or lifetime, for a socket first seen now)
    received: int
    rtt_us: int
    state: int  # 7 (CLOSE) for a socket that closed
    local: str
    peer: str


@dataclass
class _Live:
    cls: str
    cgroup: int
    dir: int
    counted: Totals
    missing: int = 0


@dataclass
class Rtt:
    buckets: list[int] = field(default_factory=lambda: [0] * RTT_BUCKETS)  # per bucket, not cumulative
    sum_us: int = 0
    count: int = 0

    def observe(self, us: int, n: int = 1) -> None:
        self.buckets[rtt_bucket(us)] += n
        self.sum_us += us * n
        self.count += n


@dataclass(frozen=True)
class Snapshot:
    """What one read of the netflow source returns (the collector's reading); plain, immutable copies."""

    bytes_by_pod: Mapping[tuple[str, str, str], tuple[int, int]]  # (class, namespace, pod) -> (sent, received)
    by_class: Mapping[str, Totals]
    opens: Mapping[tuple[str, str], int]  # (direction, class)
    closes: Mapping[tuple[str, str], int]
    connect_failed: Mapping[str, int]
    rtt: Mapping[str, tuple[tuple[int, ...], int, int]]  # class -> (per-bucket counts, sum us, count)
    probe_counters: Mapping[str, int]
    live_sockets: Mapping[str, int]  # tracked / untracked
    top: tuple[Flow, ...] = ()


class Ledger:
    def __init__(self, top_n: int = 10) -> None:
        self.top_n = top_n
        self.cycle = 0
        self.epoch: str | None = None
        self.live: dict[int, _Live] = {}
        self.recent: dict[int, int] = {}  # cookie -> cycle its record was applied
        self.bytes: dict[tuple[str, str, str], list[int]] = {}
        self.by_class: dict[str, Totals] = {}
        self.opens: dict[tuple[str, str], int] = {}
        self.closes: dict[tuple[str, str], int] = {}
        self.failed: dict[str, int] = {}
        self.rtt: dict[str, Rtt] = {}
        self.counters: dict[str, int] = {k: 0 for k in PROBE_COUNTERS}
        self.live_sockets = {"tracked": 0, "untracked": 0}
        self.top: tuple[Flow, ...] = ()
        self._prev_agg: dict[tuple[int, int], Totals] = {}
        self._prev_overflow: dict[int, Totals] = {}
        self._prev_stats: dict[int, list[int]] = {}
        self._prev_counters: dict[str, int] = {}

    # -- applying one reading -----------------------------------------------------------------------------
    def apply(self, reading: Mapping[str, Any], pod_of: PodOf) -> None:
        """Fold one probe reading (probe.Probe.read()) into the counters."""
        self.cycle += 1
        if reading.get("epoch") != self.epoch:  # a new probe process: its kernel counters start at zero
            self.epoch = reading.get("epoch")
            self._prev_agg, self._prev_overflow, self._prev_stats, self._prev_counters = {}, {}, {}, {}
        names = reading.get("names") or ["external"]
        paths = reading.get("cgroups") or {}

        def cls_name(i: int) -> str:
            return names[i] if 0 <= i < len(names) else names[0]

        pods: dict[int, tuple[str, str]] = {0: ("", "")}

        def pod(cgroup: int) -> tuple[str, str]:  # many sockets share a cgroup: look each up once per reading
            found = pods.get(cgroup)
            if found is None:
                found = pods[cgroup] = pod_of(cgroup, paths.get(str(cgroup)))
            return found

        flows: list[Flow] = []
        seen: set[int] = set()
        tracked = untracked = 0
        for row in reading.get("sockets", ()):
            (cookie, cid, cgroup, dir_, is_tracked, sent, received, retrans, segs, rtt_us, state, _netns, _family,
             src, sport, dst, dport, _inode) = row
            if cookie in self.recent:
                continue
            seen.add(cookie)
            tracked += bool(is_tracked)
            untracked += not is_tracked
            now = Totals(sent, received, retrans, segs)
            entry = self.live.get(cookie)
            if entry is None:
                entry = self.live[cookie] = _Live(cls_name(cid), cgroup, dir_, Totals())
            delta = now.minus(entry.counted)
            entry.counted, entry.missing = entry.counted.at_least(now), 0
            ns, p = pod(entry.cgroup)
            self._add(entry.cls, ns, p, delta)
            if rtt_us and (delta.sent or delta.received):  # idle sockets keep a stale RTT: not a sample
                self.rtt.setdefault(entry.cls, Rtt()).observe(rtt_us)
            flows.append(Flow(entry.cls, ns, p, _direction(entry.dir), delta.sent, delta.received, rtt_us, state,
                              _endpoint(src, sport), _endpoint(dst, dport)))
        self.live_sockets = {"tracked": tracked, "untracked": untracked}

        for row in reading.get("records", ()):
            cookie, sent, received, retrans, segs, cgroup, srtt_us, cid, dir_, flags, _oldstate = row
            entry = self.live.pop(cookie, None)
            if flags & REC_ORPHAN and entry is not None:
                # Set up by an earlier probe process: the kernel could not tell the direction to take the
                # SYN out; the ledger saw the socket live and knows it.
                dir_ = entry.dir
                if dir_ == DIR_ACTIVE:
                    sent = max(0, sent - 1)
            final = Totals(sent, received, retrans, segs)
            cls = entry.cls if entry is not None else cls_name(cid)
            cgroup = cgroup or (entry.cgroup if entry is not None else 0)
            delta = final.minus(entry.counted) if entry is not None else final
            ns, p = pod(cgroup)
            self._add(cls, ns, p, delta)
            self.recent[cookie] = self.cycle
            flows.append(Flow(cls, ns, p, _direction(dir_), delta.sent, delta.received, srtt_us, 7, "", ""))

        for cookie in [c for c, e in self.live.items() if c not in seen]:
            entry = self.live[cookie]
            entry.missing += 1
            if entry.missing > LIVE_GRACE_CYCLES:  # closed without a record (see the module docstring)
                del self.live[cookie]
        for cookie in [c for c, at in self.recent.items() if self.cycle - at > RECENT_CYCLES]:
            del self.recent[cookie]

        self._apply_kernel(reading, cls_name, pod)
        flows.sort(key=lambda f: f.sent + f.received, reverse=True)
        self.top = tuple(flows[: self.top_n])

    def _apply_kernel(self, reading: Mapping[str, Any], cls_name: Callable[[int], str],
                      pod: Callable[[int], tuple[str, str]]) -> None:
        agg: dict[tuple[int, int], Totals] = {}
        for cid, cgroup, *vals in reading.get("agg", ()):
            now = Totals(*vals)
            agg[(cid, cgroup)] = now
            ns, p = pod(cgroup)
            self._add(cls_name(cid), ns, p, now.minus(self._prev_agg.get((cid, cgroup), Totals())))
        self._prev_agg = agg  # a slot the probe freed (its cgroup is gone) simply stops contributing
        for cid, vals in enumerate(reading.get("agg_overflow", ())):
            now = Totals(*vals)
            self._add(cls_name(cid), "", "", now.minus(self._prev_overflow.get(cid, Totals())))
            self._prev_overflow[cid] = now
        for cid, vals in enumerate(reading.get("stats", ())):
            prev = self._prev_stats.get(cid) or [0] * len(vals)
            d = [max(0, a - b) for a, b in zip(vals, prev)]
            self._prev_stats[cid] = list(vals)
            cls = cls_name(cid)
            for i, direction in enumerate(DIRECTIONS):
                _bump(self.opens, (direction, cls), d[i])
                _bump(self.closes, (direction, cls), d[3 + i])
            _bump(self.failed, cls, d[2])
            if d[6]:
                r = self.rtt.setdefault(cls, Rtt())
                r.sum_us += d[5]
                r.count += d[6]
                for i, n in enumerate(d[7:7 + RTT_BUCKETS]):
                    r.buckets[i] += n
        for name, value in (reading.get("counters") or {}).items():
            if name in self.counters:
                self.counters[name] += max(0, value - self._prev_counters.get(name, 0))
                self._prev_counters[name] = value

    def _add(self, cls: str, ns: str, pod: str, delta: Totals) -> None:
        b = self.bytes.setdefault((cls, ns, pod), [0, 0])  # a series exists from its first reading, zero or not
        if not any(delta):
            return
        b[0] += delta.sent
        b[1] += delta.received
        self.by_class[cls] = self.by_class.get(cls, Totals()).plus(delta)

    def forget_pods(self, alive: set[tuple[str, str]]) -> None:
        """Drop the series of pods that are gone (DESIGN §5); the per-class totals keep their bytes."""
        for key in [k for k in self.bytes if k[2] and (k[1], k[2]) not in alive]:
            del self.bytes[key]

    # -- the reading ------------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(
            bytes_by_pod={k: (v[0], v[1]) for k, v in self.bytes.items()},
            by_class=dict(self.by_class),
            opens=dict(self.opens),
            closes=dict(self.closes),
            connect_failed=dict(self.failed),
            rtt={c: (tuple(r.buckets), r.sum_us, r.count) for c, r in self.rtt.items()},
            probe_counters=dict(self.counters),
            live_sockets=dict(self.live_sockets),
            top=self.top,
        )


def _bump(d: dict, key: Any, n: int) -> None:
    if n or key not in d:
        d[key] = d.get(key, 0) + n


def _direction(d: int) -> str:
    return DIRECTIONS[d] if d in (DIR_ACTIVE, DIR_PASSIVE) else "unknown"


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

