"""The netflow source's metric families, declared once with their label names, and readings -> samples."""
from __future__ import annotations

from typing import TYPE_CHECKING

from agent.base.metrics import Counter, Gauge, Histogram, MetricSet
from .decode import RTT_BOUNDS_US

if TYPE_CHECKING:  # the reading is defined beside the collector, which imports this module
    from .collector import NetflowReading

NETFLOW_LIVE_READ_DURATION_SECONDS = Gauge("vigil_netflow_live_read_duration_seconds", "Time the probe's last read "
                                           "of live sockets (inet_diag) took.", ())
NETFLOW_LIVE_SOCKETS = Gauge("vigil_netflow_live_sockets", "TCP sockets in the last read of live sockets; untracked "
                             "ones were opened before the probe started (their last bytes before closing are not "
                             "seen).", ("tracked",))
NETFLOW_MAP_FILL_RATIO = Gauge("vigil_netflow_map_fill_ratio", "Fill of the probe's bounded BPF maps at the last "
                               "read (0..1).", ("map",))
NETFLOW_MAP_OVERFLOWS = Counter("vigil_netflow_map_overflows_total", "Entries a full BPF map could not take: close "
                                "records lost (records), closes aggregated without their pod (agg), open sockets not "
                                "read live, counted at close only (live), sockets without state (sk_storage).",
                                ("map",))
NETFLOW_PROBE_RESTARTS = Counter("vigil_netflow_probe_restarts_total", "Times the netflow probe process was started "
                                 "again.", ())
NETFLOW_PROBE_UP = Gauge("vigil_netflow_probe_up", "1 when the netflow probe process answers.", ())
NETFLOW_PROGRAMS_LOADED = Gauge("vigil_netflow_programs_loaded", "BPF programs the netflow probe has attached.", ())
TCP_CONNECT_FAILURES = Counter("vigil_tcp_connect_failures_total", "Outgoing TCP connections that never got "
                               "established.", ("peer_class",))
TCP_CONNECTIONS_CLOSED = Counter("vigil_tcp_connections_closed_total", "TCP connections closed, by the direction "
                                 "they were opened in.", ("direction", "peer_class"))
TCP_CONNECTIONS = Counter("vigil_tcp_connections_total", "TCP connections established (egress: this node connected; "
                          "ingress: it accepted).", ("direction", "peer_class"))
TCP_FLOW_RECEIVED_BYTES = Counter("vigil_tcp_flow_received_bytes_total", "TCP payload bytes received, by peer class "
                                  "and local pod.", ("namespace", "peer_class", "pod"))
TCP_FLOW_SENT_BYTES = Counter("vigil_tcp_flow_sent_bytes_total", "TCP payload bytes sent and acknowledged, by peer "
                              "class and local pod.", ("namespace", "peer_class", "pod"))
TCP_RETRANSMITS = Counter("vigil_tcp_retransmits_total", "TCP segments retransmitted, by peer class.",
                          ("peer_class",))
TCP_SENT_SEGMENTS = Counter("vigil_tcp_sent_segments_total", "TCP segments sent (retransmissions included), by peer "
                            "class: the denominator of the retransmit ratio.", ("peer_class",))


RTT_HELP = ("Smoothed RTT of TCP connections by peer class: each connection at close, and each live connection "
            "that moved data once per read.")
TCP_RTT_SECONDS = Histogram("vigil_tcp_rtt_seconds", RTT_HELP, ("peer_class",))


def netflow_metrics(r: NetflowReading) -> MetricSet:
    ms = MetricSet()
    ms.add(NETFLOW_PROBE_UP, {}, 1 if r.state == "ok" else 0)
    ms.add(NETFLOW_PROGRAMS_LOADED, {}, r.programs if r.state == "ok" else 0)
    ms.add(NETFLOW_PROBE_RESTARTS, {}, r.restarts)
    for name, n, cap in r.maps:
        ms.add(NETFLOW_MAP_FILL_RATIO, {"map": name}, round(n / cap, 6) if cap else None)
    ms.add(NETFLOW_LIVE_READ_DURATION_SECONDS, {}, r.live_read_seconds)
    s = r.snapshot
    if s is None:
        return ms
    for name, value in (("records", s.probe_counters.get("records_lost")),
                        ("agg", s.probe_counters.get("agg_overflow")),
                        ("live", s.probe_counters.get("live_overflow")),
                        ("sk_storage", s.probe_counters.get("storage_fail"))):
        ms.add(NETFLOW_MAP_OVERFLOWS, {"map": name}, value)
    for kind, n in sorted(s.live_sockets.items()):
        ms.add(NETFLOW_LIVE_SOCKETS, {"tracked": "true" if kind == "tracked" else "false"}, n)
    for (cls, ns, pod), (sent, received) in sorted(s.bytes_by_pod.items()):
        labels = {"peer_class": cls, "namespace": ns, "pod": pod}
        ms.add(TCP_FLOW_SENT_BYTES, labels, sent)
        ms.add(TCP_FLOW_RECEIVED_BYTES, labels, received)
    for (direction, cls), n in sorted(s.opens.items()):
        ms.add(TCP_CONNECTIONS, {"direction": direction, "peer_class": cls}, n)
    for (direction, cls), n in sorted(s.closes.items()):
        ms.add(TCP_CONNECTIONS_CLOSED, {"direction": direction, "peer_class": cls}, n)
    for cls, n in sorted(s.connect_failed.items()):
        ms.add(TCP_CONNECT_FAILURES, {"peer_class": cls}, n)
    for cls, t in sorted(s.by_class.items()):
        ms.add(TCP_RETRANSMITS, {"peer_class": cls}, t.retrans)
        ms.add(TCP_SENT_SEGMENTS, {"peer_class": cls}, t.segs_out)
    ms.declare(TCP_RTT_SECONDS)
    for cls, (buckets, sum_us, count) in sorted(s.rtt.items()):
        cum, pairs = 0, []  # cumulative, as Prometheus buckets are
        for bound, n in zip(RTT_BOUNDS_US, buckets):
            cum += n
            pairs.append((bound / 1e6, cum))
        ms.add_histogram(TCP_RTT_SECONDS, {"peer_class": cls}, pairs, count, sum_us / 1e6)
    return ms
