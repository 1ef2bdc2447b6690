"""RDMA collector: InfiniBand and RoCE ports from sysfs (class/infiniband), the RoCE net devices' carrier and
MTU from netlink (pyroute2; sysfs class/net when replaying a snapshot or when netlink fails), and udev hot-plug.

read() keeps the device layout between reads and rediscovers it when the hot-plug watcher says something
changed (or on every read when no watcher runs: snapshots, no udev). It also remembers which devices it has
seen, so one that disappears is reported until it comes back or the agent restarts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from agent.base.config import CollectorSettings
from . import rules
from agent.base.collector import Collector, Context, NoData, Observation, Output
from .hotplug import RESCAN, HotplugWatcher
from .sysfs import DeviceReading, Layout, NetdevState, PortReading, discover, read_device, read_netdev_sysfs

log = logging.getLogger(__name__)

# Even with a watcher, rediscover now and then: a uevent can be missed (a netns without them, a socket overrun).
FULL_RESCAN_SECONDS = 300.0
from .metrics import rdma_metrics


@dataclass
class RdmaSettings(CollectorSettings, rules.RdmaThresholds):
    udev: bool = True  # watch udev for hot-plug; false: rediscover devices on every read
    netlink: bool = True  # RoCE netdev carrier/MTU from netlink; false: from sysfs class/net

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        self.check_thresholds(prefix)


@dataclass
class RdmaReading:
    devices: list[DeviceReading]
    missing: list[str] = field(default_factory=list)  # devices seen since start and gone now
    hotplug: str = RESCAN  # udev | kernel | rescan: how device changes are noticed
    # Counter resets per port since the agent started. evaluate() sets it from the previous reading's tally,
    # so it travels to the next cycle inside the observation the runner keeps.
    resets: dict[str, int] = field(default_factory=dict)

    @property
    def ports(self) -> list[PortReading]:
        return [p for d in self.devices for p in d.ports]


class RdmaCollector(Collector):
    name = "rdma"
    component = "rdma"
    Settings = RdmaSettings

    def __init__(self, settings: RdmaSettings, ctx: Context, watcher: HotplugWatcher | None = None,
                 netlink=None) -> None:
        super().__init__(settings, ctx)
        self._watcher = watcher
        self._netlink = netlink  # callable(names) -> {name: NetdevState}; tests inject a fake
        self._layout: Layout | None = None
        self._layout_at = 0.0
        self._seen: dict[str, str | None] = {}  # device name -> node GUID

    @property
    def live(self) -> bool:
        return self.ctx.roots.snapshot is None

    # -- collector contract ---------------------------------------------------------------------------
    def read(self) -> RdmaReading:
        ib_root = self.ctx.roots.sys("class", "infiniband")
        hotplug = self._hotplug_mode()
        if self._needs_rescan():
            self._layout, self._layout_at = discover(ib_root), time.monotonic()
            if not self._layout.complete and self._watcher is not None:
                self._watcher.mark_dirty()  # a device still registering its ports: look again next read
        devices: list[DeviceReading] = []
        for d in self._layout.devices:  # type: ignore[union-attr]
            dev = read_device(d)
            if dev is None:  # gone since the layout was taken (its uevent not handled yet)
                if self._watcher is not None:
                    self._watcher.mark_dirty()
                continue
            devices.append(dev)
        missing = self._track_presence(devices)
        if not devices and not missing and not self.ctx.expect.rdma_ports:
            raise NoData(f"no RDMA devices under {self.ctx.roots.show(ib_root)}")
        self._attach_netdevs(devices)
        return RdmaReading(devices, missing, hotplug)

    def evaluate(self, reading: RdmaReading, previous: Observation | None, elapsed: float | None) -> Output:
        prev: RdmaReading | None = previous.reading if previous else None
        reading.resets = rules.carry_resets(prev, reading)
        findings = rules.evaluate(reading, self.settings, self.ctx.expect.rdma_ports, self.ctx.node, prev, elapsed)
        return Output(rdma_metrics(reading, self.ctx.expect.rdma_ports, prev, elapsed), findings)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def _track_presence(self, devices: list[DeviceReading]) -> list[str]:
        """Devices seen since start and gone now. A device seen again under another name with the same
        node GUID (udev's persistent naming renames mlx5_0 to ibp59s0 at boot) was renamed, not removed."""
        for d in devices:
            self._seen[d.name] = d.node_guid
        names = {d.name for d in devices}
        guids = {d.node_guid for d in devices if d.node_guid}
        for name, guid in list(self._seen.items()):
            if name not in names and guid and guid in guids:
                del self._seen[name]
        return sorted(n for n in self._seen if n not in names)

    # -- layout and hot-plug --------------------------------------------------------------------------
    def _hotplug_mode(self) -> str:
        if not self.live or not self.settings.udev or self.ctx.mode.once:
            return RESCAN  # a snapshot never changes under us, and --once reads once: no watcher to start
        if self._watcher is None:
            self._watcher = HotplugWatcher()
        return self._watcher.start()  # lazily, on the first live read; later calls return the mode

    def _needs_rescan(self) -> bool:
        if self._watcher is None or not self.live:
            return True
        dirty = self._watcher.take_dirty()  # always taken, so the first scan consumes the initial mark
        return dirty or self._layout is None or time.monotonic() - self._layout_at > FULL_RESCAN_SECONDS

    # -- RoCE net devices -----------------------------------------------------------------------------
    def _attach_netdevs(self, devices: list[DeviceReading]) -> None:
        ports = [p for d in devices for p in d.ports if p.netdev_name]
        if not ports:
            return
        names = {p.netdev_name for p in ports if p.netdev_name}
        states: dict[str, NetdevState] = {}
        if self.live and self.settings.netlink:
            try:
                states = (self._netlink or netlink_links)(names)
            except Exception as e:  # no pyroute2, EPERM on the socket ...: sysfs says the same, a bit slower
                log.debug("rdma: netlink failed (%s); reading class/net from sysfs", e)
        net_root = self.ctx.roots.sys("class", "net")
        for p in ports:
            name = p.netdev_name or ""
            p.netdev = states.get(name) or read_netdev_sysfs(net_root, name)


def netlink_links(names: set[str]) -> dict[str, NetdevState]:
    """Carrier, MTU and operstate of the named links, from one RTM_GETLINK dump."""
    from pyroute2 import IPRoute

    out = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME")
            if name in names:
                oper = msg.get_attr("IFLA_OPERSTATE")
                out[name] = NetdevState(name, msg.get_attr("IFLA_CARRIER"), msg.get_attr("IFLA_MTU"),
                                        oper.lower() if isinstance(oper, str) else None, "netlink")
    return out
