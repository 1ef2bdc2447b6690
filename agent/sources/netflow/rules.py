"""Netflow health rules (pure): is the network to a kind of peer slow or lossy? A slow data loader or a storage
mount with retransmits looks, from the GPU side, exactly like a slow GPU; these rules tell them apart.

Per peer class, over the last cycle (or since the probe started, on the first reading):
  netflow.retransmits  retransmitted segments / segments sent, above `retransmit_ratio_warning` (judged
                       once at least `retransmit_min_segments` were sent)
  netflow.rtt          mean smoothed RTT of the cycle's samples (connections that closed, live ones that
                       moved data) above the class's `rtt_warning_seconds`
Both are warnings: they explain slowness, they do not make a node unschedulable.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.base.findings import WARNING, Finding, bad, ok
from .accounting import Snapshot
from .decode import Totals

C = "netflow"


@dataclass
class NetflowThresholds:
    retransmit_ratio_warning: float = 0.02
    retransmit_min_segments: int = 1000
    # Per peer class; a class not listed is not judged on RTT. Smoothed RTT includes the peer's delayed ACKs
    # (up to 40 ms on Linux) on request/response traffic, so the defaults leave room for them; node_internal
    # (mostly loopback, where RTT measures the applications) and external (far by nature) are not judged.
    rtt_warning_seconds: dict[str, float] = field(default_factory=lambda: {
        "pod_network": 0.050, "service_network": 0.050, "storage": 0.050, "nccl_bootstrap": 0.050,
        "dns": 0.100})
    rtt_min_samples: int = 1


def class_checks(now: Snapshot, before: Snapshot | None, t: NetflowThresholds) -> list[Finding]:
    """One retransmit finding and (for classes with a threshold) one RTT finding per class with traffic."""
    out: list[Finding] = []
    for cls in sorted(set(now.by_class) | set(now.rtt)):
        cur = now.by_class.get(cls, Totals())
        prev = before.by_class.get(cls, Totals()) if before else Totals()
        d = cur.minus(prev)
        span = "last cycle" if before else "since start"
        volume = f"sent {_bytes(d.sent)}, received {_bytes(d.received)} ({span})"
        if d.segs_out:
            ratio = d.retrans / d.segs_out
            msg = f"{volume}; {d.retrans} of {d.segs_out} segments retransmitted ({ratio:.2%})"
            if d.segs_out >= t.retransmit_min_segments and ratio > t.retransmit_ratio_warning:
                out.append(bad("netflow.retransmits", C, cls, msg, WARNING, value=round(ratio, 6),
                               threshold=t.retransmit_ratio_warning,
                               action=f"check the network path to {cls} peers (NIC, cables, congestion)"))
            else:
                out.append(ok("netflow.retransmits", C, cls, msg, WARNING, value=round(ratio, 6),
                              threshold=t.retransmit_ratio_warning))
        limit = t.rtt_warning_seconds.get(cls)
        mean = _mean_rtt(now.rtt.get(cls), before.rtt.get(cls) if before else None)
        if limit is not None and mean is not None and mean[1] >= t.rtt_min_samples:
            seconds, n = mean
            msg = f"mean RTT {_duration(seconds)} over {n} samples ({span}); {volume}"
            if seconds > limit:
                out.append(bad("netflow.rtt", C, cls, msg, WARNING, value=round(seconds, 6), threshold=limit,
                               action=f"check the network path to {cls} peers and their load"))
            else:
                out.append(ok("netflow.rtt", C, cls, msg, WARNING, value=round(seconds, 6), threshold=limit))
    return out


def _mean_rtt(cur: tuple | None, prev: tuple | None) -> tuple[float, int] | None:
    if cur is None:
        return None
    _b, total_us, count = cur
    if prev is not None:
        total_us, count = total_us - prev[1], count - prev[2]
    return (total_us / count / 1e6, count) if count > 0 else None


def map_check(node: str, now: Mapping[str, int], before: Mapping[str, int] | None) -> Finding:
    """Whether the probe's bounded maps kept up: lost close records make the counters inexact (the last bytes
    of those connections), aggregate overflow loses the pod of some bytes, live overflow delays the bytes of
    long connections to their close."""
    grew = {k: v - (before or {}).get(k, 0) for k, v in now.items() if v - (before or {}).get(k, 0) > 0}
    lost = {k: grew[k] for k in ("records_lost", "agg_overflow", "live_overflow", "storage_fail") if k in grew}
    if lost:
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(lost.items()))
        return bad("netflow.maps", C, node, f"BPF maps full: {what}", WARNING, value=sum(lost.values()),
                   threshold=0, action="raise netflow.record_entries, agg_entries or live_entries")
    return ok("netflow.maps", C, node, "BPF maps kept up", WARNING, value=0, threshold=0)


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
