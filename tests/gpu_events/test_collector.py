"""The gpu_events collector on a fake node (sysfs/procfs in a temp dir, a file in place of /dev/kmsg, an
injected amd-smi): cursors across restarts and reboots, persistence, and what an operator sees."""
from __future__ import annotations

import json

import pytest

from agent.base.collector import NoData
from agent.run.runner import CollectorRunner

from .helpers import Node, cycle, events_total

H100 = "0000:3b:00.0"
XID79 = ("4,2211,1843308145,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off "
         "the bus.")
XID13 = "4,2043,1612004417,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=48211, name=python3, Graphics Exception: ESR 0x0"


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path, {H100: "nvidia"})


def test_fatal_xid_is_named_by_its_gpu_index_and_counted(node):
    node.log(XID13, XID79)
    f, m = cycle(node.collector())
    x = f[("gpu.xid", "gpu0")]
    assert x.is_fatal and x.value == 79 and "reboot" in x.action
    assert events_total(m) == {("0", "xid", "13"): 1, ("0", "xid", "79"): 1}
    assert m.value("vigil_gpu_event_source_up", source="kmsg") == 1


def test_a_gpu_xid_carries_its_gpus_bus_address_for_the_aggregator(node):
    """Issue 14: the stream sends it (Event.bus_id), and the aggregator finds the GPU's DRA device by it."""
    node.log(XID79)
    f, _ = cycle(node.collector())
    assert f[("gpu.xid", "gpu0")].bus_id == H100
    assert "bus_id" not in f[("gpu.xid", "gpu0")].to_json()  # --json unchanged


def test_restart_with_the_same_state_dir_does_not_refire_but_keeps_what_is_sticky(node):
    node.log(XID13, XID79)
    first = node.collector()
    cycle(first)
    first.close()
    f, m = cycle(node.collector())  # the agent restarted: same kernel log, same state dir
    assert f[("gpu.xid", "gpu0")].is_fatal  # still unrecovered
    assert events_total(m) == {}  # but nothing is counted (or shown) twice


def test_info_is_not_shown_again_after_a_restart(node):
    node.log(XID13)
    f, _ = cycle(node.collector())
    assert f[("gpu.xid", "gpu0", "event")].severity == "info" and f[("gpu.xid", "gpu0", "event")].status == "unhealthy"
    assert f[("gpu.xid", "gpu0")].status == "ok"  # the check's state: nothing sticky
    f, m = cycle(node.collector())
    assert f[("gpu.xid", "gpu0")].status == "ok" and events_total(m) == {}


def test_incremental_reads_take_only_new_records(node):
    c = node.collector()
    node.log(XID13)
    cycle(c)
    with node.kmsg.open("a") as fh:  # a record half written when we read
        fh.write("4,2300,1700000000,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=a, Graphics")
    f, m = cycle(c)
    assert events_total(m) == {("0", "xid", "13"): 1} and f[("gpu.xid", "gpu0")].status == "ok"
    with node.kmsg.open("a") as fh:
        fh.write(" Exception\n")
    f, m = cycle(c)
    assert events_total(m) == {("0", "xid", "13"): 2} and f[("gpu.xid", "gpu0", "event")].severity == "info"


def test_new_boot_id_resets_the_kernel_cursor_and_clears_sticky_events(node):
    node.log(XID79)
    c = node.collector()
    cycle(c)
    c.close()
    # Reboot: a new boot id, and the kernel's sequence numbers start again, lower than the saved cursor.
    node.boot("boot-b")
    node.kmsg.write_text("4,5,2000000,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=7, name=a, Graphics Exception\n")
    f, m = cycle(node.collector())
    assert f[("gpu.xid", "gpu0", "event")].severity == "info"  # the Xid 79 of the old boot is gone, seq 5 is read
    assert events_total(m) == {("0", "xid", "13"): 1}
    saved = json.loads((node.state_dir / "gpu_events.json").read_text())
    assert (saved["boot_id"], saved["kmsg_seq"], saved["sticky"]) == ("boot-b", 5, [])


def test_operator_acknowledged_reset_clears_the_sticky_finding_and_persists(node):
    node.log(XID79)
    c = node.collector()
    cycle(c)
    node.log("12,2400,1900000000,-;vigil: gpu reset 0000:3b:00.0")
    f, m = cycle(c)
    assert f[("gpu.xid", "gpu0")].status == "ok"
    assert f[("gpu.reset", "gpu0", "event")].severity == "info"
    assert events_total(m)[("0", "reset", "ok")] == 1
    f, _ = cycle(node.collector())  # after a restart it stays cleared
    assert f[("gpu.xid", "gpu0")].status == "ok"


def test_once_reads_the_state_but_never_advances_it(node):
    node.log(XID13)
    f, _ = cycle(node.collector(once=True))
    assert f[("gpu.xid", "gpu0", "event")].severity == "info"
    assert not (node.state_dir / "gpu_events.json").exists()
    cycle(node.collector())  # the running agent consumes it
    before = (node.state_dir / "gpu_events.json").read_text()
    f, _ = cycle(node.collector(once=True))
    assert f[("gpu.xid", "gpu0")].status == "ok"
    assert (node.state_dir / "gpu_events.json").read_text() == before


def test_state_is_written_atomically_and_a_corrupt_one_is_replaced(node, caplog):
    node.state_dir.mkdir()
    (node.state_dir / "gpu_events.json").write_text("{not json")
    node.log(XID79)
    f, _ = cycle(node.collector())
    assert f[("gpu.xid", "gpu0")].is_fatal
    assert "ignoring unreadable state" in caplog.text
    assert sorted(p.name for p in node.state_dir.iterdir()) == ["gpu_events.json"]  # no temporary file left
    doc = json.loads((node.state_dir / "gpu_events.json").read_text())
    assert doc["version"] == 1 and doc["sticky"][0]["code"] == "79"


def test_state_is_rewritten_only_when_it_changed(node):
    """The state file is fsynced on a host path: a cycle that changed nothing leaves it alone (each save
    renames a new file into place, so the inode tells whether it was rewritten)."""
    node.log(XID79)
    c = node.collector()
    path = node.state_dir / "gpu_events.json"
    cycle(c)
    first = path.stat().st_ino
    cycle(c)
    assert path.stat().st_ino == first  # nothing new: not rewritten
    c._state.last_reset["gpu0"] = 1.0  # a change made in place (a reset with nothing sticky to clear)
    cycle(c)
    assert path.stat().st_ino != first
    assert json.loads(path.read_text())["last_reset"] == {"gpu0": 1.0}
    node.log("4,2300,1900000000,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=a, Graphics Exception")
    second = path.stat().st_ino
    cycle(c)
    assert path.stat().st_ino != second and json.loads(path.read_text())["kmsg_seq"] == 2300


def test_unsaveable_state_does_not_fail_the_read(node, caplog):
    node.state_dir.write_text("a file where the directory should be")
    node.log(XID79)
    f, _ = cycle(node.collector())
    assert f[("gpu.xid", "gpu0")].is_fatal and "cannot save state" in caplog.text


def test_unknown_pci_address_becomes_the_entity(tmp_path):
    node = Node(tmp_path, {})
    node.log("4,10,10,-;NVRM: Xid (PCI:0000:af:00): 48, pid=1, name=a, An uncorrectable double bit error")
    f, m = cycle(node.collector())
    assert f[("gpu.xid", "pci:0000:af:00.0")].is_fatal
    assert events_total(m) == {("0000:af:00.0", "xid", "48"): 1}


def test_no_source_on_a_gpu_node_is_a_failure_and_without_gpus_no_data(tmp_path):
    node = Node(tmp_path / "a", {H100: "nvidia"})
    node.kmsg.unlink()
    runner = CollectorRunner(node.collector())
    result = runner.run_once()
    assert not result.success
    (f,) = result.output.findings
    assert (f.check, f.status) == ("gpu.events", "unknown") and "not found" in f.message
    bare = Node(tmp_path / "b", {})
    bare.kmsg.unlink()
    with pytest.raises(NoData):
        bare.collector().read()


def test_live_dev_kmsg_read(tmp_path):
    """The real /dev/kmsg, where this machine lets us read it: the whole ring is read the first time, the
    cursor is saved, and a second collector with the same state reads nothing old again."""
    import os
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("/dev/kmsg not readable")
    node = Node(tmp_path, {})
    c = node.collector()
    c.settings.kmsg_path = "/dev/kmsg"
    cycle(c)
    c.close()
    assert c._state.kmsg_seq is not None and c._state.kmsg_seq > 0
    saved = json.loads((node.state_dir / "gpu_events.json").read_text())
    assert saved["kmsg_seq"] == c._state.kmsg_seq


def test_settings_from_yaml():
    from agent.base.config import ConfigError, load
    from agent.run.loop import collector_schemas

    cfg = load(None, collector_schemas(["gpu_events"]),
               text="gpu_events:\n  state_dir: /tmp/x\n  xid_severity: {109: warning, 13: ignore}\n")
    s = cfg.section("gpu_events")
    assert s.xid_severity == {"109": "warning", "13": "ignore"} and s.state_dir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"gpu_events\.xid_severity\.109"):
        load(None, collector_schemas(["gpu_events"]), text="gpu_events:\n  xid_severity: {109: loud}\n")
    with pytest.raises(ConfigError, match=r"gpu_events\.nvml_wait_ms"):
        load(None, collector_schemas(["gpu_events"]), text="gpu_events:\n  nvml_wait_ms: 0\n")


def test_ignored_xid_is_counted_without_a_finding(node):
    node.log(XID13)
    c = node.collector(xid_severity={"13": "ignore"})
    f, m = cycle(c)
    assert f[("gpu.xid", "gpu0")].status == "ok" and events_total(m) == {("0", "xid", "13"): 1}


def check_status(c) -> dict:
    """One cycle's vigil_check_status samples as the agent exports them: (check, entity, severity) -> value."""
    from agent.run.loop import core_metrics
    from agent.run.runner import Result

    out = c.evaluate(c.read(), None, None)
    fam = core_metrics([Result("gpu_events", out, True, 0.0)], "n1").families["vigil_check_status"]
    c.last_events = [f for f in out.findings if f.is_event]
    return {(l["check"], l["entity"], l["severity"]): v for _, l, v in fam.samples}


def test_info_xid_is_an_event_and_the_check_keeps_one_series(node):
    """Issue 12 item 8: an info-level Xid 13 showed as gpu.xid{severity="info"} 0 (unhealthy) on the first
    scrape, then that series vanished and {severity="fatal"} 1 appeared for the same check and entity."""
    c = node.collector()
    node.log(XID13)
    first = check_status(c)
    assert [(e.check, e.entity, e.severity, e.value) for e in c.last_events] == [("gpu.xid", "gpu0", "info", 13)]
    second = check_status(c)
    node.log("4,2050,1612005417,-;NVRM: Xid (PCI:0000:3b:00): 43, pid=48211, name=python3, Ch 00000010")
    third = check_status(c)
    for scrape in (first, second, third):
        assert {k: v for k, v in scrape.items() if k[0] == "gpu.xid"} == {("gpu.xid", "gpu0", "fatal"): 1}
