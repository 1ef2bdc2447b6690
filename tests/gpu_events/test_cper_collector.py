"""CPER through the collector with a stand-in for the amd-smi binary (no AMD GPU here). The stand-in writes
what amd-smi 26.x writes: the table on stdout and one <sev>-<n>.json header per record into --folder
(ROCm/amdsmi amdsmi_cli dump_cper_entries). The records' contents are modelled; their shapes are real."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import Node, cycle, events_total

GPU1 = "0000:22:00.0"
LIST = json.dumps([{"gpu": 0, "bdf": "0000:0c:00.0"}, {"gpu": 1, "bdf": GPU1}])


def header(sev: str, notify: str, ts: str, rid: str) -> dict:
    return {"error_severity": sev, "notify_type": notify, "timestamp": ts, "signature": "CPER", "revision": 256,
            "signature_end": "0xffffffff", "sec_cnt": 1, "record_length": 376, "platform_id": "0x1002:0x74A1",
            "creator_id": "amdgpu", "record_id": rid, "flags": 0, "persistence_info": 0}


class FakeAmdSmi:
    def __init__(self) -> None:
        self.ring: list[tuple[int, dict]] = []  # (gpu, header), oldest first
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None

    def __call__(self, argv: list[str], timeout: float) -> str:
        self.calls.append(argv)
        if argv[1] == "list":
            return LIST
        if self.fail is not None:
            raise self.fail
        folder = Path(argv[argv.index("--folder") + 1])
        lines = [f"{'timestamp':<20} {'gpu_id':<7} {'severity':<20} {'file_name':<17} list of afids"]
        for n, (gpu, h) in enumerate(self.ring, 1):
            word = "BOOT" if h["notify_type"] == "BOOT" else {"fatal": "FATAL",
                                                              "non_fatal_corrected": "NONFATAL-CORRECTED"}[
                h["error_severity"]]
            name = f"{word.lower()}-{n}"
            (folder / f"{name}.json").write_text(json.dumps(h, indent=2))
            (folder / f"{name}.cper").write_bytes(b"CPER")
            lines.append(f"{h['timestamp']:<20} {gpu:<7} {word:<20} {name + '.cper':<17} 19")
        return "\n".join(lines) + "\n"


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path, {"0000:0c:00.0": "amd", GPU1: "amd"}, btime=1_779_800_000)


def test_fatal_record_is_sticky_and_never_refires_after_a_restart(node):
    smi = FakeAmdSmi()
    smi.ring.append((1, header("fatal", "MCE", "2026/05/27 17:59:09", "1:1")))
    f, m = cycle(node.collector(tool=smi))
    assert f[("gpu.cper", "gpu1")].is_fatal and "AFID 19" in f[("gpu.cper", "gpu1")].message
    assert f[("gpu.cper", "gpu0")].status == "ok"
    assert events_total(m) == {("1", "cper", "fatal"): 1}
    assert any("--folder" in c and "--cper" in c for c in smi.calls)
    f, m = cycle(node.collector(tool=smi))  # restart: the record is still in the ring
    assert events_total(m) == {} and f[("gpu.cper", "gpu1")].is_fatal


def test_driver_reset_clears_the_record_and_it_stays_cleared(node):
    smi = FakeAmdSmi()
    smi.ring.append((1, header("fatal", "MCE", "2026/05/27 17:59:09", "1:1")))
    c = node.collector(tool=smi)
    cycle(c)
    # boot time 1_779_800_000 (2026-05-26 13:33:20 UTC) + 110_000 s: after the record (17:59:09 the next day)
    node.log("6,900,110000000000,-;amdgpu 0000:22:00.0: amdgpu: GPU reset(1) succeeded!")
    f, _ = cycle(c)
    assert f[("gpu.cper", "gpu1")].status == "ok" and f[("gpu.reset", "gpu1", "event")].severity == "info"
    f, m = cycle(node.collector(tool=smi))  # the record is still listed after a restart: still old
    assert f[("gpu.cper", "gpu1")].status == "ok" and events_total(m) == {}


def test_record_read_after_the_reset_it_caused_is_not_sticky(node):
    """The kernel log shows the reset before amd-smi lists the record of the error that caused it."""
    smi = FakeAmdSmi()
    c = node.collector(tool=smi)
    # boot time 1_779_800_000 + 75_000 s = 2026-05-27 09:43:20 UTC; the record is dated ten seconds earlier
    node.log("6,900,75000000000,-;amdgpu 0000:22:00.0: amdgpu: GPU reset(1) succeeded!")
    cycle(c)
    smi.ring.append((1, header("fatal", "MCE", "2026/05/27 09:43:10", "1:1")))
    f, _ = cycle(c)
    x = f[("gpu.cper", "gpu1", "event")]
    assert x.severity == "info" and "before the GPU's last reset" in x.message


def test_boot_record_after_a_reboot_is_info(node):
    smi = FakeAmdSmi()
    smi.ring.append((0, header("fatal", "BOOT", "2026/05/27 09:12:40", "0:1")))
    f, _ = cycle(node.collector(tool=smi))
    assert f[("gpu.cper", "gpu0", "event")].severity == "info" and f[("gpu.cper", "gpu0")].status == "ok"


def test_driver_reload_restarting_record_ids_is_still_new(node):
    """amdgpu's record counter restarts at every driver load: "1:1" again, with another timestamp, is new."""
    smi = FakeAmdSmi()
    smi.ring.append((1, header("non_fatal_corrected", "CMC", "2026/05/27 17:59:09", "1:1")))
    c = node.collector(tool=smi)
    cycle(c)
    smi.ring[:] = [(1, header("fatal", "MCE", "2026/05/28 08:00:00", "1:1"))]
    f, m = cycle(c)
    assert f[("gpu.cper", "gpu1")].is_fatal and events_total(m)[("1", "cper", "fatal")] == 1


def test_cper_unsupported_is_not_a_failure_and_is_retried_later(node):
    smi = FakeAmdSmi()
    smi.fail = RuntimeError("amd-smi ras --cper exited 255: Error accessing CPER files. This command requires "
                            "CPER to be enabled.")
    c = node.collector(tool=smi)
    f, m = cycle(c)
    assert ("gpu.cper", "n1") not in f and ("gpu.cper", "gpu1") not in f
    assert m.value("vigil_gpu_event_source_up", source="cper") == 0
    n = sum(1 for a in smi.calls if "ras" in a)
    cycle(c)
    assert sum(1 for a in smi.calls if "ras" in a) == n  # backed off, not run every cycle


def test_cper_failure_is_unknown(node):
    smi = FakeAmdSmi()
    smi.fail = TimeoutError("amd-smi ras --cper did not finish in 15s (process group killed)")
    f, _ = cycle(node.collector(tool=smi))
    assert f[("gpu.cper", "n1")].status == "unknown" and "did not finish" in f[("gpu.cper", "n1")].message
