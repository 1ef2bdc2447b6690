"""Hot-plug for the RDMA source: a udev monitor on the infiniband and net subsystems, in its own daemon thread,
marks the collector's device layout dirty, so a device that appears or disappears (or a netdev renamed behind a
RoCE port) is picked up at the next read without a restart.

pyudev is imported only when the watcher starts (on the first live read): never at import, never when
replaying a snapshot. Without udevd (a container that does not mount /run/udev) the kernel's own uevents are
used; if no monitor can start at all the watcher says "rescan" and the collector rescans sysfs on every read.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)

SUBSYSTEMS = ("infiniband", "net")
# add/remove: hot-plug and driver reloads; move: a netdev rename; change/bind/unbind: cheap to honour.
ACTIONS = frozenset({"add", "remove", "move", "change", "bind", "unbind"})
RESCAN = "rescan"


class Monitor(Protocol):
    def poll(self, timeout: float | None = None) -> Any:  # a device with action/subsystem/sys_name, or None
        ...


def udev_monitor() -> tuple[Monitor, str]:
    import pyudev  # needs libudev.so; a missing library surfaces here as an exception and we fall back

    context = pyudev.Context()
    # Without udevd, libudev's "udev" source silently receives nothing: listen to the kernel instead
    # (the agent runs with hostNetwork, and kernel uevents reach the host's network namespace).
    source = "udev" if os.path.exists("/run/udev/control") else "kernel"
    monitor = pyudev.Monitor.from_netlink(context, source=source)
    for subsystem in SUBSYSTEMS:
        monitor.filter_by(subsystem)
    monitor.start()
    return monitor, source


class HotplugWatcher:
    """take_dirty() says whether the layout must be rediscovered; it is dirty at first and after every
    relevant event. In "rescan" mode (no monitor) it is always dirty."""

    def __init__(self, monitor_factory: Callable[[], tuple[Monitor, str]] = udev_monitor,
                 poll_seconds: float = 1.0) -> None:
        self._factory = monitor_factory
        self._poll = poll_seconds
        self._dirty = threading.Event()
        self._dirty.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self.mode = RESCAN
        self.events = 0  # relevant events seen, for tests and debugging

    def start(self) -> str:
        if self._started:  # one attempt: a failed start is not retried on every read
            return self.mode
        self._started = True
        try:
            monitor, mode = self._factory()
        except Exception as e:  # no libudev, no netlink socket (seccomp), ...: rescan every read instead
            log.info("rdma hot-plug: no udev monitor (%s); rescanning sysfs on every read", e)
            self.mode = RESCAN
            return self.mode
        self.mode = mode
        self._thread = threading.Thread(target=self._run, args=(monitor,), name="rdma-hotplug", daemon=True)
        self._thread.start()
        return self.mode

    def _run(self, monitor: Monitor) -> None:
        while not self._stop.is_set():
            try:
                device = monitor.poll(timeout=self._poll)
            except Exception as e:  # the socket broke: nothing more will come, so fall back to rescanning
                log.warning("rdma hot-plug monitor stopped (%s); rescanning sysfs on every read", e)
                self.mode = RESCAN
                return
            if device is not None:
                self.handle(getattr(device, "action", None), getattr(device, "subsystem", None),
                            getattr(device, "sys_name", None))

    def handle(self, action: str | None, subsystem: str | None, name: str | None) -> bool:
        """One uevent; True when it dirtied the layout."""
        if subsystem not in SUBSYSTEMS or action not in ACTIONS:
            return False
        log.debug("rdma hot-plug: %s %s %s", action, subsystem, name)
        self.events += 1
        self._dirty.set()
        return True

    def mark_dirty(self) -> None:
        self._dirty.set()

    def take_dirty(self) -> bool:
        if self.mode == RESCAN:
            return True
        # Cleared before the caller rescans: an event landing during the rescan dirties the next read.
        if self._dirty.is_set():
            self._dirty.clear()
            return True
        return False

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t.is_alive():
            t.join(timeout=self._poll + 0.5)  # a daemon thread: never hold up shutdown for long
