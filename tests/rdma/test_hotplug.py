"""Hot-plug: the udev watcher's logic with a fake event source (no udev events can be produced here without
real hardware), the collector's rescan on a fixture tree where device dirs come and go, the removal finding,
and a smoke test of the real pyudev monitor on this machine."""
from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from agent.base.collector import RunMode
from agent.sources.rdma import collector as rdma_mod
from agent.sources.rdma.hotplug import RESCAN, HotplugWatcher

from .helpers import IB, ROOT, collector, copy_node, one, run


class FakeMonitor:
    """pyudev.Monitor's poll(timeout) over a queue of (action, subsystem, sys_name)."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def push(self, action: str, subsystem: str, name: str) -> None:
        self.q.put(SimpleNamespace(action=action, subsystem=subsystem, sys_name=name))

    def poll(self, timeout=None):
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def __call__(self):  # the watcher's monitor factory
        return self, "fake"


def wait_for(cond, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def watched():
    mon = FakeMonitor()
    w = HotplugWatcher(mon, poll_seconds=0.05)
    yield mon, w
    w.stop()


def test_watcher_marks_dirty_on_infiniband_and_net_events_only(watched):
    mon, w = watched
    assert w.start() == "fake"
    assert w.take_dirty() is True  # the first read always scans
    assert w.take_dirty() is False
    mon.push("add", "block", "sda")
    mon.push("add", "infiniband", "mlx5_8")
    wait_for(lambda: w.events == 1)
    assert w.take_dirty() is True and w.take_dirty() is False
    mon.push("move", "net", "enp68s0")  # a rename behind a RoCE port
    wait_for(lambda: w.events == 2)
    assert w.take_dirty() is True
    mon.push("remove", "infiniband", "mlx5_8")
    wait_for(lambda: w.events == 3)
    assert w.take_dirty() is True


def test_watcher_falls_back_to_rescanning_when_no_monitor_starts():
    def no_udev():
        raise ImportError("libudev.so.1: cannot open shared object file")

    w = HotplugWatcher(no_udev)
    assert w.start() == RESCAN
    assert all(w.take_dirty() for _ in range(3))
    assert w.start() == RESCAN  # not retried on every read


def test_watcher_falls_back_when_the_monitor_breaks(watched):
    mon, w = watched
    w.start()
    mon.q.put(OSError("netlink socket closed"))
    wait_for(lambda: w.mode == RESCAN)
    assert w.take_dirty() and w.take_dirty()


def test_live_layout_is_cached_until_an_event_then_rescanned(tmp_path, watched):
    """Between events the collector keeps its device list; a new HCA shows up after its udev event."""
    mon, w = watched
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node, live=True, watcher=w)
    assert len(c.read().ports) == 8
    assert w.mode == "fake"
    ib = node.joinpath(*IB)
    shutil.copytree(ib / "mlx5_7", ib / "mlx5_8")
    assert len(c.read().ports) == 8  # no event yet: the cached layout stands
    mon.push("add", "infiniband", "mlx5_8")
    wait_for(lambda: w.events == 1)
    reading = c.read()
    assert [p.key for p in reading.ports][-1] == "mlx5_8/1" and reading.hotplug == "fake"


def test_device_that_disappears_is_fatal_until_it_comes_back(tmp_path, watched):
    mon, w = watched
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node, live=True, watcher=w)
    first, out = run(c)
    ib = node.joinpath(*IB)
    shutil.move(ib / "mlx5_5", tmp_path / "mlx5_5.away")
    # Gone without its uevent handled yet: the read notices and the next read rescans.
    second, out = run(c, previous=first, elapsed=10.0)
    assert second.missing == ["mlx5_5"] and len(second.ports) == 7
    f = one(out.findings, "rdma.device_removed", "mlx5_5")
    assert (f.status, f.severity) == ("unhealthy", "fatal")
    assert one(out.findings, "rdma.port_count", node.name).status == "unhealthy"
    assert out.metrics.value("vigil_rdma_port_state", device="mlx5_5") is None  # its series are dropped
    mon.push("remove", "infiniband", "mlx5_5")
    third, out = run(c, previous=second, elapsed=10.0)
    assert third.missing == ["mlx5_5"]  # stays while it is away
    shutil.move(tmp_path / "mlx5_5.away", ib / "mlx5_5")
    mon.push("add", "infiniband", "mlx5_5")
    wait_for(lambda: w.events == 2)
    fourth, out = run(c, previous=third, elapsed=10.0)
    assert fourth.missing == [] and len(fourth.ports) == 8
    assert not [f for f in out.findings if f.status != "ok"]


def test_snapshot_rescans_every_read_and_never_starts_a_watcher(tmp_path, monkeypatch):
    def forbidden(*a, **kw):
        raise AssertionError("a hot-plug watcher must not start in snapshot mode")

    monkeypatch.setattr(rdma_mod, "HotplugWatcher", forbidden)
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node)
    first, _ = run(c)
    shutil.rmtree(node.joinpath(*IB, "mlx5_2"))
    second, out = run(c, previous=first, elapsed=10.0)
    assert second.hotplug == RESCAN and second.missing == ["mlx5_2"]
    assert one(out.findings, "rdma.device_removed", "mlx5_2").is_fatal


def test_a_device_still_registering_is_looked_at_again(tmp_path, watched):
    """udev can announce a device before its ports exist: the layout stays dirty until they do."""
    mon, w = watched
    node = copy_node("rdma-8port-healthy", tmp_path)
    ib = node.joinpath(*IB)
    shutil.move(ib / "mlx5_7" / "ports", tmp_path / "ports.later")
    c = collector(node, live=True, watcher=w)
    assert len(c.read().ports) == 7
    shutil.move(tmp_path / "ports.later", ib / "mlx5_7" / "ports")
    assert len(c.read().ports) == 8  # no event needed


def test_udev_disabled_in_config_rescans_without_a_watcher(tmp_path, monkeypatch):
    def forbidden(*a, **kw):
        raise AssertionError("rdma.udev: false must not start a watcher")

    monkeypatch.setattr(rdma_mod, "HotplugWatcher", forbidden)
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node, live=True, udev=False)
    assert len(c.read().ports) == 8
    shutil.copytree(node.joinpath(*IB, "mlx5_7"), node.joinpath(*IB, "mlx5_9"))
    assert c.read().hotplug == RESCAN and len(c.read().ports) == 9


def test_importing_or_building_the_collector_touches_no_udev():
    code = ("import sys; from agent.sources.rdma.collector import RdmaCollector, RdmaSettings; "
            "from agent.base.collector import Context; from agent.base.roots import Roots; from agent.base.config import "
            "Expectations; RdmaCollector(RdmaSettings(), Context(Roots(), 'n', Expectations())); "
            "import threading; print('pyudev' in sys.modules, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "1"]


def test_real_pyudev_monitor_starts_and_stops():
    """On this machine (no udevd in a container) the kernel's uevents are used, or rescan if even that fails."""
    w = HotplugWatcher(poll_seconds=0.1)
    mode = w.start()
    try:
        assert mode in ("udev", "kernel", RESCAN)
        assert w.take_dirty() is True
    finally:
        w.stop()
    assert w._thread is None or not w._thread.is_alive()


def test_a_renamed_device_is_not_a_removed_one(tmp_path):
    """udev's persistent naming renames mlx5_0 to ibp59s0 at boot; the node GUID says it is the same HCA."""
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node)
    first, _ = run(c)
    ib = node.joinpath(*IB)
    (ib / "mlx5_0").rename(ib / "ibp59s0")
    second, out = run(c, previous=first, elapsed=10.0)
    assert second.missing == [] and "ibp59s0/1" in [p.key for p in second.ports]
    assert not [f for f in out.findings if f.status != "ok"]


def test_layout_is_rediscovered_now_and_then_even_without_events(tmp_path, watched, monkeypatch):
    """A missed uevent (overrun socket, no uevents in this netns) must not hide a new HCA forever."""
    mon, w = watched
    node = copy_node("rdma-8port-healthy", tmp_path)
    c = collector(node, live=True, watcher=w)
    c.read()
    shutil.copytree(node.joinpath(*IB, "mlx5_7"), node.joinpath(*IB, "mlx5_8"))
    monkeypatch.setattr(rdma_mod, "FULL_RESCAN_SECONDS", 0.0)
    assert len(c.read().ports) == 9 and w.events == 0


def test_once_mode_starts_no_watcher(tmp_path, monkeypatch):
    def forbidden(*a, **kw):
        raise AssertionError("agent --once reads once: no watcher")

    monkeypatch.setattr(rdma_mod, "HotplugWatcher", forbidden)
    c = collector(copy_node("rdma-8port-healthy", tmp_path), live=True)
    c.ctx.mode = RunMode(once=True)
    assert c.read().hotplug == RESCAN
