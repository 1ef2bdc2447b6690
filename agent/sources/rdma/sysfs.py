"""RDMA sysfs parsing (pure but for the file reads): /sys/class/infiniband/<dev>/ports/<n>/... into typed readings.

Discovery (which devices, ports, counter files and net devices exist) is kept apart from reading values, so the
collector can keep a layout between reads and rediscover it only when hot-plug says something changed.

Quirks handled here, all seen in real captures (see fixtures/nodes/rdma-*/README.md):
- a counter file may read "N/A (no PMA)" (i40iw), or fail to read with ENOENT, EPERM, EINVAL, EOPNOTSUPP or
  ENOSYS on newer kernels: that counter is skipped, never the port or the device;
- `port_rcv_data`/`port_xmit_data` count 4-byte words (the collector exports bytes);
- the classic PMA counters are narrow and stop at their maximum (see COUNTER_BITS);
- `hw_counters/lifespan` is a setting (the cache lifetime in ms), not a counter; bnxt_re's `active_*` are
  current resource counts, not counters;
- text files may carry extra blank lines ("InfiniBand\\n\\n" on a real mlx4).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.base.validate import COUNTER_MAX, ascii_int, index as port_number

# Width in bits of the IBA PortCounters attributes behind counters/*. They saturate instead of wrapping, so a
# counter at its maximum means "at least this many" and hides every new error. The kernel fills the data and
# packet counters from PortCountersExtended when the HCA has it (values above 2^32 are then real), which is
# why a 32-bit entry is judged saturated only at exactly 2^32-1. unicast/multicast exist only as 64-bit.
COUNTER_BITS: dict[str, int] = {
    "symbol_error": 16,
    "link_error_recovery": 8,
    "link_downed": 8,
    "port_rcv_errors": 16,
    "port_rcv_remote_physical_errors": 16,
    "port_rcv_switch_relay_errors": 16,
    "port_xmit_discards": 16,
    "port_xmit_constraint_errors": 8,
    "port_rcv_constraint_errors": 8,
    "local_link_integrity_errors": 4,
    "excessive_buffer_overrun_errors": 4,
    "VL15_dropped": 16,
    "port_xmit_data": 32,
    "port_rcv_data": 32,
    "port_xmit_packets": 32,
    "port_rcv_packets": 32,
    "port_xmit_wait": 32,
    "unicast_xmit_packets": 64,
    "unicast_rcv_packets": 64,
    "multicast_xmit_packets": 64,
    "multicast_rcv_packets": 64,
}

# counters/* error counters -> the `type` label of vigil_rdma_port_errors_total.
ERROR_TYPES: dict[str, str] = {
    "symbol_error": "symbol",
    "link_downed": "link_downed",
    "link_error_recovery": "link_error_recovery",
    "port_rcv_errors": "rcv_errors",
    "port_xmit_discards": "xmit_discards",
    "local_link_integrity_errors": "local_link_integrity",
    "excessive_buffer_overrun_errors": "excessive_buffer_overrun",
    "port_rcv_remote_physical_errors": "rcv_remote_physical",
    "port_rcv_switch_relay_errors": "rcv_switch_relay",
    "port_xmit_constraint_errors": "xmit_constraint",
    "port_rcv_constraint_errors": "rcv_constraint",
    "VL15_dropped": "vl15_dropped",
}

# Byte and packet totals: counters/ name -> its mlx4 counters_ext twin (64-bit).
DATA_COUNTERS: dict[str, str] = {
    "port_rcv_data": "port_rcv_data_64",
    "port_xmit_data": "port_xmit_data_64",
    "port_rcv_packets": "port_rcv_packets_64",
    "port_xmit_packets": "port_xmit_packets_64",
}
WORD_COUNTERS = ("port_rcv_data", "port_xmit_data")  # in units of 4 octets (IBA PortXmitData/PortRcvData)

HW_SETTINGS = frozenset({"lifespan"})
HW_GAUGE_PREFIX = "active_"  # bnxt_re: active_qps, active_mrs ... go up and down

COUNTER_GROUPS = ("counters", "counters_ext", "hw_counters")
ACTIVE, LINK_UP = 4, 5  # IBA PortState ACTIVE, PortPhysicalState LinkUp

_READ_LIMIT = 4096  # a sysfs attribute is at most one page


def _read_bytes(path: Path) -> bytes:
    # O_NONBLOCK: a FIFO left in a snapshot dir must not hang the read (it reads as empty instead).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, _READ_LIMIT)
    finally:
        os.close(fd)


def read_attr(path: Path) -> str | None:
    """The stripped text of one attribute file; None when it cannot be read for any reason (ENOENT, EPERM,
    EINVAL, EOPNOTSUPP, ENOSYS, a directory ...): the caller skips that one value."""
    try:
        data = _read_bytes(path)
    except OSError:
        return None
    return data.decode("utf-8", "replace").strip()


def parse_counter(text: str | None) -> int | None:
    """An integer counter value; None for "N/A (no PMA)", empty or garbled text."""
    if not text or not text.split():
        return None
    token = text.split()[0]
    if token.lower().startswith("0x"):
        value = int(token, 16) if re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", token) else None
    else:
        value = ascii_int(token)  # ASCII digits, at most 20 of them
    # Negative, or wider than the 64-bit counters the kernel exports: not a counter value.
    return value if value is not None and 0 <= value <= COUNTER_MAX else None


def parse_state(text: str | None) -> tuple[int | None, str | None]:
    """"4: ACTIVE" -> (4, "ACTIVE"); "5: LinkUp" -> (5, "LinkUp")."""
    if not text:
        return None, None
    num, sep, name = text.partition(":")
    state = port_number(num) if sep else None  # "²: ACTIVE" is no state number (isdigit() says it is)
    if state is not None:
        return state, name.strip() or None
    return None, text.strip()


_RATE = re.compile(r"^\s*([0-9]{1,6}(?:\.[0-9]{1,6})?)\s*Gb/sec")  # a real rate has a few digits


def parse_rate(text: str | None) -> float | None:
    """"100 Gb/sec (4X EDR)" -> 12.5e9 bytes per second (the signalling rate the port negotiated)."""
    m = _RATE.match(text or "")
    return float(m.group(1)) * 1e9 / 8 if m else None


def bits_of(name: str) -> int | None:
    return COUNTER_BITS.get(name)


def is_saturated(name: str, value: int | None) -> bool:
    bits = COUNTER_BITS.get(name)
    return bits is not None and value is not None and value == (1 << bits) - 1


def natural_key(name: str) -> tuple:
    # ASCII digit runs, bounded: int("²") raises, and so does int() of 5,000 digits.
    return tuple((0, int(p)) if p.isascii() and p.isdigit() and len(p) <= 20 else (1, p)
                 for p in re.split(r"([0-9]+)", name))


# -- readings ---------------------------------------------------------------------------------------------
@dataclass
class NetdevState:
    """The Ethernet device behind a RoCE port."""

    name: str
    carrier: int | None = None
    mtu: int | None = None
    operstate: str | None = None
    source: str = "sysfs"  # netlink | sysfs


@dataclass
class PortReading:
    device: str
    port: int
    state_id: int | None = None
    state: str | None = None  # ACTIVE, DOWN, INIT, ARMED
    phys_state_id: int | None = None
    phys_state: str | None = None  # LinkUp, Polling, Disabled ...
    rate: str | None = None  # the raw text: "100 Gb/sec (4X EDR)"
    link_layer: str | None = None  # InfiniBand | Ethernet
    counters: dict[str, int] = field(default_factory=dict)
    counters_ext: dict[str, int] = field(default_factory=dict)
    hw_counters: dict[str, int] = field(default_factory=dict)
    hw_gauges: dict[str, int] = field(default_factory=dict)
    unavailable: int = 0  # counter files that could not be read or read N/A
    netdev_name: str | None = None
    netdev: NetdevState | None = None

    @property
    def key(self) -> str:
        return f"{self.device}/{self.port}"

    @property
    def up(self) -> bool:
        """ACTIVE and LinkUp; a port whose phys_state cannot be read is judged by its logical state."""
        return self.state_id == ACTIVE and self.phys_state_id in (LINK_UP, None)

    @property
    def rate_bytes_per_second(self) -> float | None:
        return parse_rate(self.rate)

    def data(self, name: str) -> tuple[int | None, str | None]:
        """A byte or packet total, in the counter's own unit, and where it came from. counters/ is the
        kernel's standard (64-bit when the HCA has extended counters); mlx4's counters_ext twin is used when
        counters/ lacks the value or stopped at the 32-bit maximum."""
        value = self.counters.get(name)
        ext = self.counters_ext.get(DATA_COUNTERS[name])
        if value is None or (is_saturated(name, value) and ext is not None and ext > value):
            return (ext, "counters_ext") if ext is not None else (None, None)
        return value, "counters"

    def octets(self, name: str) -> int | None:
        value, _ = self.data(name)
        if value is None:
            return None
        return value * 4 if name in WORD_COUNTERS else value


@dataclass
class DeviceReading:
    name: str
    fw_ver: str | None = None
    board_id: str | None = None
    hca_type: str | None = None
    node_guid: str | None = None
    ports: list[PortReading] = field(default_factory=list)


# -- layout -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortLayout:
    device: str
    port: int
    path: Path
    files: dict[str, tuple[str, ...]]  # counter group -> file names
    netdev: str | None  # RoCE: the Ethernet device behind the port


@dataclass(frozen=True)
class DeviceLayout:
    name: str
    path: Path
    ports: tuple[PortLayout, ...]


@dataclass(frozen=True)
class Layout:
    devices: tuple[DeviceLayout, ...]
    complete: bool = True  # False when a device had no port yet (still registering): rescan next time


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path), key=natural_key)
    except OSError:
        return []


def discover(ib_root: Path) -> Layout:
    devices, complete = [], True
    for name in _listdir(ib_root):
        dev_path = ib_root / name
        ports = []
        for p in _listdir(dev_path / "ports"):
            number = port_number(p)  # a directory named "²" or "99999999999" is not a port: skipped
            if number is None:
                continue
            port_path = dev_path / "ports" / p
            files = {g: tuple(_listdir(port_path / g)) for g in COUNTER_GROUPS}
            netdev = None
            if (read_attr(port_path / "link_layer") or "").lower() == "ethernet":
                netdev = find_netdev(dev_path, port_path, number)
            ports.append(PortLayout(name, number, port_path, files, netdev))
        if not ports:
            complete = False
        devices.append(DeviceLayout(name, dev_path, tuple(ports)))
    return Layout(tuple(devices), complete)


def find_netdev(dev_path: Path, port_path: Path, port: int) -> str | None:
    """The net device of a RoCE port: the GID table's ndevs (what the kernel routes RoCE through), else the
    PCI function's net/ directory (one netdev per port, told apart by dev_port)."""
    ndevs = port_path / "gid_attrs" / "ndevs"
    for entry in _listdir(ndevs):
        name = read_attr(ndevs / entry)  # an unused GID entry reads EINVAL: skipped by read_attr
        if name:
            return name
    net = dev_path / "device" / "net"
    names = _listdir(net)
    if len(names) > 1:
        for n in names:
            if parse_counter(read_attr(net / n / "dev_port")) == port - 1:
                return n
    return names[0] if names else None


def read_device(d: DeviceLayout) -> DeviceReading | None:
    """One device's values; None when the device vanished since the layout was taken."""
    if not d.path.is_dir():
        return None
    dev = DeviceReading(d.name, read_attr(d.path / "fw_ver"), read_attr(d.path / "board_id"),
                        read_attr(d.path / "hca_type"), read_attr(d.path / "node_guid"))
    for p in d.ports:
        dev.ports.append(read_port(p))
    return dev


def read_port(p: PortLayout) -> PortReading:
    r = PortReading(p.device, p.port, netdev_name=p.netdev)
    r.state_id, r.state = parse_state(read_attr(p.path / "state"))
    r.phys_state_id, r.phys_state = parse_state(read_attr(p.path / "phys_state"))
    r.rate = read_attr(p.path / "rate") or None
    r.link_layer = read_attr(p.path / "link_layer") or None
    for group in COUNTER_GROUPS:
        for name in p.files.get(group, ()):
            if group == "hw_counters" and name in HW_SETTINGS:
                continue
            value = parse_counter(read_attr(p.path / group / name))
            if value is None:
                r.unavailable += 1
                continue
            if group == "counters":
                r.counters[name] = value
            elif group == "counters_ext":
                r.counters_ext[name] = value
            elif name.startswith(HW_GAUGE_PREFIX):
                r.hw_gauges[name] = value
            else:
                r.hw_counters[name] = value
    return r


def read_netdev_sysfs(net_root: Path, name: str) -> NetdevState:
    """carrier reads EINVAL while the device is administratively down: that is no carrier, not unknown."""
    base = net_root / name
    operstate = read_attr(base / "operstate")
    carrier = parse_counter(read_attr(base / "carrier"))
    if carrier is None and operstate == "down":
        carrier = 0
    return NetdevState(name, carrier, parse_counter(read_attr(base / "mtu")), operstate, "sysfs")
