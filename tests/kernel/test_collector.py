"""The kernel collector on a fake node (a regular file standing in for /dev/kmsg, in its record framing):
conditions with their severities, episodes instead of one event per line, the persisted cursor across a
restart, a reboot, an operator's clear, an unreadable log, and the one reader shared with gpu_events."""
from __future__ import annotations

from agent.base import kmsg as shared
from agent.base.findings import EVENT, node_status
from agent.sources.gpu_events.collector import GpuEventsCollector, GpuEventsSettings
from agent.base.collector import Context
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from tests.kernel.helpers import NPD, Node, by_check, run

HUNG = "INFO: task containerd:2107 blocked for more than 122 seconds."
RO = "EXT4-fs (nvme0n1p1): Remounting filesystem read-only"
IOERR = "I/O error, dev nvme0n1, sector 123456 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2"
SOFT = "watchdog: BUG: soft lockup - CPU#12 stuck for 23s! [python3:4242]"


def test_a_quiet_log_is_every_condition_ok(tmp_path):
    node = Node(tmp_path)
    node.log("Linux version 6.1.0-18-amd64", "usb 1-1: new high-speed USB device number 2")
    out = run(node.collector())
    checks = by_check(out)
    for c in ("kernel.kernel_deadlock", "kernel.kernel_oops", "kernel.cpu_lockup", "kernel.readonly_filesystem",
              "kernel.machine_check"):
        assert [f.status for f in checks[c]] == ["ok"], c
    assert node_status(out.findings) == "healthy"
    assert all(f.entity == "node-1" and f.component == "kernel" for f in out.findings)


def test_conditions_take_their_rules_severity(tmp_path):
    node = Node(tmp_path)
    node.log(HUNG, RO, SOFT)
    checks = by_check(run(node.collector()))
    dead = checks["kernel.kernel_deadlock"][0]
    assert (dead.status, dead.severity) == ("unhealthy", "fatal") and "RuntimeTaskHung" in dead.message
    assert dead.action == "drain the node and reboot it"
    ro = checks["kernel.readonly_filesystem"][0]
    assert ro.is_fatal and "nvme0n1p1" in ro.message
    lock = checks["kernel.cpu_lockup"][0]
    assert (lock.status, lock.severity) == ("unhealthy", "warning")  # a soft lockup warns; a hard one is fatal
    # The hung containerd task is also a TaskHung event.
    assert checks["kernel.event.task_hung"][0].kind == EVENT


def test_a_flood_of_io_errors_is_one_episode(tmp_path):
    node = Node(tmp_path)
    for i in range(1000):
        node.log(IOERR, at=100 + i * 0.01)
    c = node.collector(episode_seconds=60)
    out = run(c)
    events = by_check(out)["kernel.event.io_error"]
    assert len(events) == 1 and events[0].value == 1000 and "1000 matching lines" in events[0].message
    # More within the window: counted, not shown again.
    node.log(IOERR, IOERR, at=130)
    assert "kernel.event.io_error" not in by_check(run(c))
    # Past the window: shown again, with the count since.
    node.log(IOERR, at=170)
    ev = by_check(run(c))["kernel.event.io_error"][0]
    assert ev.value == 1003 and ev.message.startswith("IOError: 3 matching lines (1003 in this episode)")
    c.close()


def test_a_restarted_agent_keeps_its_conditions_and_does_not_refire(tmp_path):
    node = Node(tmp_path)
    node.log(RO, IOERR)
    c = node.collector()
    first = by_check(run(c))
    assert first["kernel.readonly_filesystem"][0].is_fatal and "kernel.event.io_error" in first
    c.close()
    assert node.state()["active"]["ReadonlyFilesystem"]["reason"] == "FilesystemIsReadOnly"
    again = by_check(run(node.collector()))
    assert again["kernel.readonly_filesystem"][0].is_fatal  # remembered
    assert "kernel.event.io_error" not in again  # the cursor: an old line is not news


def test_a_reboot_clears_conditions(tmp_path):
    node = Node(tmp_path)
    node.log(RO)
    c = node.collector()
    assert by_check(run(c))["kernel.readonly_filesystem"][0].is_fatal
    c.close()
    node.boot("boot-b")
    node.kmsg.write_text("")
    node.seq = 0
    node.log("Linux version 6.1.0-18-amd64")
    assert by_check(run(node.collector()))["kernel.readonly_filesystem"][0].status == "ok"


def test_an_operator_clears_a_condition_through_the_kernel_log(tmp_path):
    node = Node(tmp_path)
    node.log(RO, HUNG)
    c = node.collector()
    run(c)
    node.log("vigil: kernel clear ReadonlyFilesystem")
    checks = by_check(run(c))
    assert checks["kernel.readonly_filesystem"][0].status == "ok"
    assert checks["kernel.kernel_deadlock"][0].is_fatal  # only the one named


def test_clear_after_seconds_is_hysteresis_on_the_condition(tmp_path):
    """Kernel times are CLOCK_MONOTONIC (printk's base), the clock the live collector compares with."""
    import time
    node = Node(tmp_path)
    node.log(SOFT, at=max(time.monotonic() - 10, 0))
    c = node.collector(clear_after_seconds=600, state_dir="")
    assert by_check(run(c))["kernel.cpu_lockup"][0].status == "unhealthy"  # 10 s ago: still set
    old = Node(tmp_path / "old")
    at = max(time.monotonic() - 1000, 0)  # at most the boot: a machine up less than 1,000 s logs it earlier
    old.log(SOFT, at=at)
    assert by_check(run(old.collector(clear_after_seconds=600, state_dir="")))["kernel.cpu_lockup"][0].status \
        == ("ok" if time.monotonic() - at > 600 else "unhealthy")  # over 600 s ago and nothing since: cleared


def test_an_unreadable_kernel_log_is_unknown_never_healthy(tmp_path):
    node = Node(tmp_path)
    out = run(node.collector(kmsg_path=str(tmp_path / "no-such-kmsg")))
    assert {f.status for f in out.findings} == {"unknown"}
    assert node_status(out.findings) == "unknown" and out.partial
    assert "no-such-kmsg" in out.findings[0].message


def test_once_reads_the_state_but_never_writes_it(tmp_path):
    node = Node(tmp_path)
    node.log(RO)
    run(node.collector(once=True))
    assert not (node.state_dir / "kernel.json").exists()


def test_an_npd_file_and_the_defaults_together(tmp_path):
    """NPD's file keeps its own lookback (5m): on the first read of a boot its rules skip older lines."""
    node = Node(tmp_path)  # up 10,000 s
    node.log("XFS (nvme1n1): Corruption of in-memory data detected.  Shutting down filesystem", at=60)
    node.log("INFO: task docker:20744 blocked for more than 120 seconds.", RO, at=9990)
    out = run(node.collector(rule_files=["default", str(NPD / "kernel-monitor.json")]))
    checks = by_check(out)
    assert checks["kernel.kernel_deadlock"][0].is_fatal  # NPD's DockerHung (and our TaskHung event)
    assert checks["kernel.xfs_shutdown"][0].status == "ok"  # NPD's own condition: its line is past lookback
    assert checks["kernel.readonly_filesystem"][0].is_fatal
    assert "XfsShutdown" in checks["kernel.readonly_filesystem"][0].message  # our rules read the whole boot


def test_severity_override_and_ignore(tmp_path):
    node = Node(tmp_path)
    node.log(RO, IOERR)
    checks = by_check(run(node.collector(severity={"ReadonlyFilesystem": "warning", "IOError": "ignore"})))
    ro = checks["kernel.readonly_filesystem"][0]
    assert (ro.status, ro.severity) == ("unhealthy", "warning")  # the condition's override decides
    assert "kernel.event.io_error" not in checks  # an ignored rule matches nothing
    other = Node(tmp_path / "b")
    other.log(RO)
    checks = by_check(run(other.collector(severity={"FilesystemIsReadOnly": "info"})))
    assert checks["kernel.readonly_filesystem"][0].severity == "info"  # a rule's override, by its reason


def test_one_reader_shared_with_gpu_events(tmp_path):
    """Both sources subscribe to the same path: one descriptor, each sees every record once."""
    node = Node(tmp_path)
    node.log("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.", RO)
    k = node.collector()
    g = GpuEventsCollector(build(GpuEventsSettings, {"kmsg_path": str(node.kmsg), "state_dir": "",
                                                      "nvml_events": False, "cper": False}, "gpu_events"),
                           Context(Roots(node.sys, node.proc), "node-1", Expectations()))
    gr = g.read()
    kr = by_check(k.evaluate(k.read(), None, None))
    assert len([f for f in shared._FEEDS.values() if f.path == str(node.kmsg)]) == 1
    assert any(s.code == "79" for s in gr.sticky)
    assert kr["kernel.readonly_filesystem"][0].is_fatal
    node.log("nvme nvme0: I/O 12 QID 3 timeout, aborting")
    assert "kernel.event.nvme_timeout" in by_check(run(k))
    assert g.read().sticky  # gpu_events still has its Xid; nothing was stolen from either
    k.close()
    g.close()
    assert str(node.kmsg) not in shared._FEEDS  # the last one out closes the descriptor


def test_a_backlog_larger_than_the_shared_ring_is_read_in_turns(tmp_path, monkeypatch):
    """The feed never pumps more than its ring holds: the reader gets every record over a few reads, and a
    subscriber that stopped reading loses only its own oldest records (counted), never the other's."""
    monkeypatch.setattr(shared, "RING_RECORDS", 100)
    node = Node(tmp_path)
    node.log(*[f"line {i}" for i in range(250)])
    fast = shared.subscribe(str(node.kmsg), 1000)
    slow = shared.subscribe(str(node.kmsg), 1000)
    got = []
    for _ in range(5):
        got += fast.read()
    assert [r.seq for r in got] == list(range(1, 251))
    assert slow.read() and slow.missed > 0
    fast.close()
    slow.close()
