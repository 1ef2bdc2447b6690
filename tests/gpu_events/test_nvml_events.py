"""The NVML event thread on a fake pynvml (tests/gpu/fake_pynvml.py's real-H100 replay, extended with the event
API in fake_nvml_events.py): events delivered, the thread stops on close, and a wait stuck in the driver does
not hold close() beyond its timeout."""
from __future__ import annotations

import time

import pytest

from agent.sources.gpu_events.nvml_events import NvmlEventWatcher

from .fake_nvml_events import EVENT_RECOVERY_ACTION, EVENT_XID, FakePynvmlEvents
from .helpers import Node, cycle, events_total

H100_PCI = "0000:00:06.0"  # the captured H100's PCI address (nvml.json)


def wait_for(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_events_are_delivered_with_the_gpu_they_belong_to():
    lib = FakePynvmlEvents()
    w = NvmlEventWatcher(lib, wait_ms=50)
    assert w.start() and w.registered == 1
    assert lib.sets[0].registered[0][1] == EVENT_XID | EVENT_RECOVERY_ACTION  # only what we asked for
    lib.fire(EVENT_XID, 79)
    lib.fire(EVENT_XID, 94, instance=5)
    assert wait_for(lambda: len(w._queue) == 2)
    a, b = w.drain()
    assert (a.event_type, a.data, a.gpu, a.pci, a.gpu_instance) == (EVENT_XID, 79, "0", H100_PCI, None)
    assert (b.data, b.gpu_instance) == (94, 5) and b.n > a.n
    assert w.drain() == [] and w.gpu_map() == {H100_PCI: "0"}
    assert w.close()
    assert lib.sets[0].freed and lib.initialized == 0  # event set freed, nvmlShutdown called


def test_close_stops_the_thread_within_the_wait_timeout():
    lib = FakePynvmlEvents()
    w = NvmlEventWatcher(lib, wait_ms=100)
    w.start()
    assert wait_for(lambda: lib.waits >= 2)  # it loops on timeouts
    t0 = time.monotonic()
    assert w.close()
    assert time.monotonic() - t0 < 1.0 and not w._thread.is_alive()


def test_a_hanging_wait_does_not_block_close_beyond_its_timeout():
    lib = FakePynvmlEvents()
    w = NvmlEventWatcher(lib, wait_ms=100)
    w.start()
    lib.hang()
    assert wait_for(lambda: lib.waits >= 2)  # now inside the hanging wait (or about to be)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert w.close() is False  # gave up on the thread
    assert time.monotonic() - t0 < 0.1 + 1.0 + 0.5
    assert w._thread.is_alive()  # abandoned, a daemon thread
    lib.release()
    w._thread.join(2)
    assert not w._thread.is_alive()


def test_unavailable_nvml_is_reported_not_raised():
    w = NvmlEventWatcher(FakePynvmlEvents(init_error=12), wait_ms=50)
    assert not w.start() and "nvmlInit failed" in w.error
    w = NvmlEventWatcher(FakePynvmlEvents(supported=0x4), wait_ms=50)  # PState only: nothing we want
    assert not w.start() and "no GPU supports" in w.error
    assert w.close()


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path, {H100_PCI: "nvidia"})


def test_collector_uses_nvml_xids_when_the_kernel_log_is_unreadable(node):
    node.kmsg.unlink()  # e.g. /dev/kmsg not mounted into the pod
    lib = FakePynvmlEvents()
    c = node.collector(nvml_lib=lib, nvml_wait_ms=50)
    try:
        f, m = cycle(c)
        watcher = c._watcher
        assert f[("gpu.xid", "gpu0")].status == "ok"
        assert m.value("vigil_gpu_event_source_up", source="nvml") == 1
        assert m.value("vigil_gpu_event_source_up", source="kmsg") == 0
        lib.fire(EVENT_XID, 79)
        lib.fire(EVENT_XID, 13)
        assert wait_for(lambda: len(c._watcher._queue) == 2)
        f, m = cycle(c)
        x = f[("gpu.xid", "gpu0")]
        assert x.is_fatal and x.value == 79 and "NVML" in x.message
        assert events_total(m) == {("0", "xid", "79"): 1, ("0", "xid", "13"): 1}
        lib.fire(EVENT_RECOVERY_ACTION, 0)  # the driver says: no action needed any more
        assert wait_for(lambda: len(c._watcher._queue) == 1)
        f, m = cycle(c)
        assert f[("gpu.xid", "gpu0")].status == "ok" and events_total(m)[("0", "reset", "ok")] == 1
    finally:
        c.close()
    assert not watcher._thread.is_alive()  # the collector's close() stopped the thread


def test_kernel_log_wins_over_nvml_for_the_same_xid(node):
    lib = FakePynvmlEvents()
    c = node.collector(nvml_lib=lib, nvml_wait_ms=50)
    try:
        cycle(c)
        node.log("4,10,10,-;NVRM: Xid (PCI:0000:00:06): 79, pid='<unknown>', name=<unknown>, GPU has fallen off "
                 "the bus.")
        lib.fire(EVENT_XID, 79)  # NVML sees the same Xid
        assert wait_for(lambda: len(c._watcher._queue) == 1)
        f, m = cycle(c)
        assert f[("gpu.xid", "gpu0")].is_fatal and "NVRM: Xid" in f[("gpu.xid", "gpu0")].message
        assert events_total(m) == {("0", "xid", "79"): 1}  # counted once
        lib.fire(EVENT_RECOVERY_ACTION, 0)  # which the kernel log does not show: used
        assert wait_for(lambda: len(c._watcher._queue) == 1)
        f, _ = cycle(c)
        assert f[("gpu.xid", "gpu0")].status == "ok"
    finally:
        c.close()
