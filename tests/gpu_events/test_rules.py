"""Sticky and one-shot findings: what keeps a GPU unhealthy, and what clears it."""
from __future__ import annotations

from agent.sources.gpu_events import kmsg, rules
from agent.sources.gpu_events.model import GpuEvent
from agent.sources.gpu_events.state import EventState


def kernel(seq: int, text: str, btime: float | None = None, usec: int | None = None) -> GpuEvent:
    (ev,) = kmsg.events(kmsg.KmsgRecord(seq, usec if usec is not None else seq * 1_000_000, 4, text), btime)
    return ev


XID79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=python3, GPU has fallen off the bus."
XID13 = "NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=python3, Graphics Exception: ESR 0x0"
ACK = "vigil: gpu reset 0000:3b:00.0"


def run(state, events, known=None, checks=frozenset({"xid"}), remembered=frozenset(), boot_time=None):
    t = rules.Tracker(state, boot_time)
    for ev in events:
        entity = f"gpu{ev.gpu}" if ev.gpu is not None else "gpu3"
        t.apply(ev, entity, "3" if ev.gpu is None else ev.gpu)
    return {(f.check, f.entity): f for f in rules.findings(state.sticky, t.once, known or {"gpu3": "nvidia"},
                                                           set(checks), set(remembered), "n1")}


def test_fatal_sticks_across_reads_until_a_reset():
    state = EventState("boot-a")
    f = run(state, [kernel(1, XID79)])
    assert f[("gpu.xid", "gpu3")].is_fatal
    f = run(state, [])  # next read: nothing new, still fatal
    assert f[("gpu.xid", "gpu3")].is_fatal and "fallen off the bus" in f[("gpu.xid", "gpu3")].message
    f = run(state, [kernel(9, ACK)], remembered={("gpu.xid", "gpu3")})
    assert f[("gpu.xid", "gpu3")].status == "ok"
    assert f[("gpu.reset", "gpu3")].severity == "info" and "cleared 1" in f[("gpu.reset", "gpu3")].message
    assert state.sticky == []


def test_info_appears_once():
    state = EventState("boot-a")
    f = run(state, [kernel(1, XID13), kernel(2, XID13)])
    x = f[("gpu.xid", "gpu3")]
    assert (x.status, x.severity, x.is_fatal) == ("unhealthy", "info", False) and "2 events" in x.message
    assert run(state, [])[("gpu.xid", "gpu3")].status == "ok"


def test_fatal_then_reset_in_the_same_read_is_shown_as_recovered():
    state = EventState("boot-a")
    f = run(state, [kernel(1, XID79), kernel(2, ACK)])
    x = f[("gpu.xid", "gpu3")]
    assert x.severity == "info" and "recovered" in x.message and x.action is None
    assert state.sticky == []


def test_a_reset_does_not_clear_what_happened_after_it():
    """Sources are read one after another (kernel log, NVML, amd-smi): an event may be applied before a reset
    that happened earlier. The times decide."""
    state = EventState("boot-a")
    later = kernel(9, XID79, btime=1000.0, usec=60_000_000)  # at 1060
    ack = kernel(5, ACK, btime=1000.0, usec=5_000_000)  # at 1005, applied after
    f = run(state, [later, ack])
    assert f[("gpu.xid", "gpu3")].is_fatal
    f = run(state, [kernel(10, ACK, btime=1000.0, usec=61_000_000)], remembered={("gpu.xid", "gpu3")})
    assert f[("gpu.xid", "gpu3")].status == "ok"


def test_reset_of_another_gpu_clears_nothing_and_reset_all_clears_everything():
    state = EventState("boot-a")
    run(state, [kernel(1, XID79)])
    other = kernel(2, "vigil: gpu reset 0000:af:00.0")
    t = rules.Tracker(state)
    t.apply(other, "gpu7", "7")
    assert len(state.sticky) == 1
    t.apply(kernel(3, "vigil: gpu reset all"), "", "")
    assert state.sticky == []


def test_recovery_action_none_clears_and_154_to_reboot_sticks():
    state = EventState("boot-a")
    f = run(state, [kernel(1, XID79), kernel(2, "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed "
                                                "from 0x0 (None) to 0x2 (Node Reboot Required)")])
    x = f[("gpu.xid", "gpu3")]
    assert x.is_fatal and x.value == 79 and "also Xid 154" in x.message  # the root cause heads the finding
    run(state, [kernel(3, "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x2 (Node Reboot "
                          "Required) to 0x0 (None)")])
    assert state.sticky == []


def test_new_boot_drops_sticky_events_and_the_kernel_cursor():
    state = EventState("boot-a", kmsg_seq=42)
    run(state, [kernel(1, XID79)])
    state.cper = {"0": ["1:1|2026/05/27 17:59:09"]}
    assert state.new_boot("boot-b")
    assert (state.sticky, state.kmsg_seq) == ([], None)
    assert state.cper == {"0": ["1:1|2026/05/27 17:59:09"]}  # the CPER cursor is not per boot (state.py)
    assert not state.new_boot("boot-b")


def cper_event(severity="fatal", notify="MCE", at=None, gpu="1"):
    return GpuEvent("cper", severity, severity, "fatal hardware error", "reset it", "amd-smi", "CPER ...",
                    f"cper:{gpu}:{notify}{at}", gpu=gpu, at=at, details={"notify_type": notify})


def test_stale_cper_records_never_mark_a_gpu():
    boot = 1_780_000_000.0
    state = EventState("boot-a")
    f = run(state, [cper_event(notify="BOOT", at=boot + 10)], known={"gpu1": "amd"}, checks={"cper"},
            boot_time=boot)
    assert f[("gpu.cper", "gpu1")].severity == "info" and "before this boot" in f[("gpu.cper", "gpu1")].message
    f = run(state, [cper_event(at=boot - 3600)], known={"gpu1": "amd"}, checks={"cper"}, boot_time=boot)
    assert f[("gpu.cper", "gpu1")].severity == "info" and "dated before this boot" in f[("gpu.cper", "gpu1")].message
    state.last_reset["gpu1"] = boot + 500
    f = run(state, [cper_event(at=boot + 400)], known={"gpu1": "amd"}, checks={"cper"}, boot_time=boot)
    assert f[("gpu.cper", "gpu1")].severity == "info" and "last reset" in f[("gpu.cper", "gpu1")].message
    f = run(state, [cper_event(at=boot + 900)], known={"gpu1": "amd"}, checks={"cper"}, boot_time=boot)
    assert f[("gpu.cper", "gpu1")].is_fatal
    # a record whose clock was never set (the docs' 2000/06/27) is taken as current: at is None
    state.sticky.clear()
    f = run(state, [cper_event(at=None)], known={"gpu1": "amd"}, checks={"cper"}, boot_time=boot)
    assert f[("gpu.cper", "gpu1")].is_fatal


def test_ok_rows_only_for_checks_whose_source_ran():
    state = EventState("boot-a")
    f = run(state, [], known={"gpu0": "nvidia", "gpu1": "amd"}, checks={"xid", "ras"})
    assert set(f) == {("gpu.xid", "gpu0"), ("gpu.xid.warning", "gpu0"), ("gpu.ras", "gpu1"),
                      ("gpu.ras.warning", "gpu1")}
    assert all(x.status == "ok" for x in f.values())
    assert {k[0]: x.severity for k, x in f.items()} == {"gpu.xid": "fatal", "gpu.xid.warning": "warning",
                                                         "gpu.ras": "fatal", "gpu.ras.warning": "warning"}


XID63 = "NVRM: Xid (PCI:0000:3b:00): 63, pid=1, name=python3, Row Remapper: New row marked for remapping"


def test_a_warning_xid_sticks_on_its_own_row_and_never_changes_the_fatal_rows_severity():
    """Issue 12: a sticky warning Xid (63: a row marked for remapping; also 94 and unknown codes) used to turn
    gpu.xid's row into severity "warning": a new vigil_check_status series, and the fatal-row alert paging for a
    warning. Each row now keeps one severity; a fatal Xid later still heads the fatal row."""
    state = EventState("boot-a")
    f = run(state, [kernel(1, XID63)])
    assert (f[("gpu.xid", "gpu3")].status, f[("gpu.xid", "gpu3")].severity) == ("ok", "fatal")
    w = f[("gpu.xid.warning", "gpu3")]
    assert (w.status, w.severity) == ("unhealthy", "warning") and "Xid 63" in w.message
    f = run(state, [kernel(2, XID79)])
    assert f[("gpu.xid", "gpu3")].is_fatal and "fallen off" in f[("gpu.xid", "gpu3")].message
    assert f[("gpu.xid.warning", "gpu3")].status == "unhealthy"
    f = run(state, [kernel(3, ACK)], remembered={("gpu.xid", "gpu3")})  # a reset clears both rows
    assert f[("gpu.xid", "gpu3")].status == f[("gpu.xid.warning", "gpu3")].status == "ok"


def test_duplicate_event_keys_are_not_applied_twice():
    state = EventState("boot-a")
    t = rules.Tracker(state)
    ev = kernel(1, XID79)
    assert t.apply(ev, "gpu3", "3") and not t.apply(ev, "gpu3", "3")
    fallen = kernel(2, "NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.")
    assert not t.apply(fallen, "gpu3", "3")  # the paragraph after an Xid 79 is the same event
    assert len(state.sticky) == 1
