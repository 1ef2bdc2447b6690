"""The RDMA source's metric families, declared once with their label names, and readings -> samples."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import rules
from agent.base.metrics import Counter, Gauge, MetricSet
from .sysfs import ERROR_TYPES, WORD_COUNTERS, DeviceReading, PortReading, bits_of, is_saturated

if TYPE_CHECKING:  # the reading is defined beside the collector, which imports this module
    from .collector import RdmaReading

RDMA_PORT_BYTES = {d: Counter(f"vigil_rdma_port_{d}_bytes_total", f"Bytes {d} on the port (port_*_data x 4).",
                               ("device", "port")) for d in ("received", "transmitted")}
RDMA_PORT_PACKETS = {d: Counter(f"vigil_rdma_port_{d}_packets_total", f"Packets {d} on the port.", ("device", "port"))
                     for d in ("received", "transmitted")}
RDMA_DEVICE_INFO = Gauge("vigil_rdma_device_info", "RDMA device identity.",
                         ("board_id", "device", "fw", "hca_type", "node_guid"))
RDMA_HOTPLUG_INFO = Gauge("vigil_rdma_hotplug_info", "How device changes are noticed: udev, kernel (uevents without "
                          "udevd) or rescan (sysfs on every read).", ("mode",))
RDMA_HW_RESOURCES = Gauge("vigil_rdma_hw_resources", "Driver resource counts (hw_counters/active_*), by name.",
                          ("device", "port", "resource"))
RDMA_HW_STATS = Counter("vigil_rdma_hw_stats_total", "Driver hardware counters (hw_counters/*), by name.",
                        ("counter", "device", "port"))
RDMA_NETDEV_CARRIER = Gauge("vigil_rdma_netdev_carrier", "Carrier of the RoCE port's net device (1 up).",
                            ("device", "netdev", "port"))
RDMA_NETDEV_MTU_BYTES = Gauge("vigil_rdma_netdev_mtu_bytes", "MTU of the RoCE port's net device.",
                              ("device", "netdev", "port"))
RDMA_PORT_ERRORS = Counter("vigil_rdma_port_errors_total", "Port error counters (IB PMA), by type.",
                           ("device", "port", "type"))
RDMA_PORT_INFO = Gauge("vigil_rdma_port_info", "RDMA port identity.", ("device", "fw", "link_layer", "port", "rate"))
RDMA_PORT_PHYSICAL_STATE_ID = Gauge("vigil_rdma_port_physical_state_id", "IBA physical port state (2 Polling, 3 "
                                    "Disabled, 5 LinkUp ...).", ("device", "port"))
RDMA_PORT_RATE_BYTES_PER_SECOND = Gauge("vigil_rdma_port_rate_bytes_per_second", "Negotiated signalling rate of the "
                                        "port.", ("device", "port"))
RDMA_PORT_STAT_SATURATED = Gauge("vigil_rdma_port_stat_saturated", "1 when a narrow counter sits at its maximum and "
                                 "hides new counts.", ("counter", "device", "port"))
RDMA_PORT_STATE = Gauge("vigil_rdma_port_state", "1 when the port is ACTIVE and LinkUp, 0 otherwise.",
                        ("device", "port"))
RDMA_PORT_STATE_ID = Gauge("vigil_rdma_port_state_id", "IBA logical port state (1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE).",
                           ("device", "port"))
RDMA_PORT_STATS_RESETS = Counter("vigil_rdma_port_stats_resets_total", "Times the port's counters went backwards "
                                 "(driver reload, counters cleared) since the agent started.", ("device", "port"))
RDMA_PORT_STATS = Counter("vigil_rdma_port_stats_total", "Other port counters (counters/*: xmit_wait, unicast, "
                          "multicast ...), by file name.", ("counter", "device", "port"))
RDMA_PORT_STATS_UNAVAILABLE = Gauge("vigil_rdma_port_stats_unavailable", "Counter files that read N/A or could not "
                                    "be read.", ("device", "port"))
RDMA_PORT_THROUGHPUT_BYTES_PER_SECOND = Gauge("vigil_rdma_port_throughput_bytes_per_second", "Bytes per second "
                                              "between the last two reads.", ("device", "direction", "port"))
RDMA_PORTS = Gauge("vigil_rdma_ports", "RDMA ports present.", ())
RDMA_PORTS_EXPECTED = Gauge("vigil_rdma_ports_expected", "RDMA ports this node should have (config or node.json).",
                            ())


_DIRECTIONS = (("received", "port_rcv_data", "port_rcv_packets"), ("transmitted", "port_xmit_data",
                                                                    "port_xmit_packets"))


def rdma_metrics(r: RdmaReading, expected: int | None, prev: RdmaReading | None = None,
                 elapsed: float | None = None) -> MetricSet:
    ms = MetricSet()
    ms.add(RDMA_PORTS, {}, len(r.ports))
    if expected is not None:
        ms.add(RDMA_PORTS_EXPECTED, {}, expected)
    ms.add(RDMA_HOTPLUG_INFO, {"mode": r.hotplug}, 1)
    prev_ports = {p.key: p for p in prev.ports} if prev is not None else {}
    for d in r.devices:
        ms.add(RDMA_DEVICE_INFO, {
            "device": d.name, "fw": d.fw_ver, "board_id": d.board_id, "hca_type": d.hca_type,
            "node_guid": d.node_guid}, 1)
        for p in d.ports:
            _port(ms, d, p, r.resets.get(p.key, 0), prev_ports.get(p.key), elapsed)
    return ms


def _port(ms: MetricSet, d: DeviceReading, p: PortReading, resets: int, prev: PortReading | None,
          elapsed: float | None) -> None:
    lp = {"device": p.device, "port": str(p.port)}
    ms.add(RDMA_PORT_INFO, {**lp, "link_layer": p.link_layer, "rate": p.rate,
                                                             "fw": d.fw_ver}, 1)
    ms.add(RDMA_PORT_STATE, lp, None if p.state_id is None else int(p.up))
    ms.add(RDMA_PORT_STATE_ID, lp, p.state_id)
    ms.add(RDMA_PORT_PHYSICAL_STATE_ID, lp, p.phys_state_id)
    ms.add(RDMA_PORT_RATE_BYTES_PER_SECOND, lp, p.rate_bytes_per_second)
    for direction, data, packets in _DIRECTIONS:
        ms.add(RDMA_PORT_BYTES[direction], lp, p.octets(data))
        ms.add(RDMA_PORT_PACKETS[direction], lp, p.data(packets)[0])
        if prev is not None and elapsed:
            # Prometheus can take rate() of the counters; this gauge saves a query on dashboards and shows a
            # reset as the traffic since the reset, never as a negative number.
            d_bytes, _ = rules.delta(prev.octets(data), p.octets(data))
            ms.add(RDMA_PORT_THROUGHPUT_BYTES_PER_SECOND, {**lp, "direction": direction},
                   None if d_bytes is None else round(d_bytes / elapsed, 3))
    for name, value in sorted(p.counters.items()):
        if name in ERROR_TYPES:
            ms.add(RDMA_PORT_ERRORS, {**lp, "type": ERROR_TYPES[name]}, value)
        elif name not in _DATA_NAMES:
            ms.add(RDMA_PORT_STATS, {**lp, "counter": name}, value)
        if bits_of(name) is not None:
            ms.add(RDMA_PORT_STAT_SATURATED, {**lp, "counter": name}, int(is_saturated(name, value)))
    for name, value in sorted(p.hw_counters.items()):
        ms.add(RDMA_HW_STATS, {**lp, "counter": name}, value)
    for name, value in sorted(p.hw_gauges.items()):
        ms.add(RDMA_HW_RESOURCES, {**lp, "resource": name}, value)
    ms.add(RDMA_PORT_STATS_UNAVAILABLE, lp, p.unavailable)
    ms.add(RDMA_PORT_STATS_RESETS, lp, resets)
    if p.netdev is not None:
        ln = {**lp, "netdev": p.netdev.name}
        ms.add(RDMA_NETDEV_CARRIER, ln, p.netdev.carrier)
        ms.add(RDMA_NETDEV_MTU_BYTES, ln, p.netdev.mtu)


_DATA_NAMES = frozenset(WORD_COUNTERS) | {"port_rcv_packets", "port_xmit_packets"}
