"""Kernel-log parsing on real line formats. Each line below is quoted from a public log or from the driver's
own format string; the source is given next to it."""
from __future__ import annotations

import pytest

from agent.sources.gpu_events import kmsg
from agent.base.pci import normalize as normalize_pci


def one(text: str, **kw):
    rec = kmsg.KmsgRecord(seq=7, usec=1_843_308_145, priority=4, text=text)
    return kmsg.events(rec, **kw)


# (line, pci, code, severity, extra checks) -- real Xid lines
REAL_XIDS = [
    # leptonai/gpud PR #46 (dmesg of a real node, 2024-08-30)
    ("NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on "
     "(GPC 7, TPC 7, SM 0): Illegal Instruction Parameter", "0000:cb:00.0", "13", "info"),
    ("NVRM: Xid (PCI:0000:cb:00): 109, pid=1797828, name=pt_main_thread, Ch 00000008, errorString CTX SWITCH "
     "TIMEOUT, Info 0x58005", "0000:cb:00.0", "109", "fatal"),
    # 3dem/relion#436: an older driver, no pid/name
    ("NVRM: Xid (PCI:0000:41:00): 13, Graphics Exception: ESR 0x5067b0=0x9 0x5067b4=0x24 0x5067a8=0x4c1eb72 "
     "0x5067ac=0x174", "0000:41:00.0", "13", "info"),
    # NVIDIA/NVSentinel#155 (comment quoting a real Xid 79)
    ("NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", "0000:44:00.0", "79", "fatal"),
    # gpud xid.go comment: old drivers print no "PCI:" prefix
    ("NVRM: Xid (0000:03:00): 14, Channel 00000001", "0000:03:00.0", "14", "info"),
    # NVIDIA A100 memory error management guide, via the driver source comment (MIG attribution)
    ("NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No",
     "0000:01:00.0", "94", "warning"),
    ("NVRM: Xid (PCI:0000:01:00): 95, pid=7062, Uncontained: LTC TAG (0x2,0x1). RST: Yes, D-RST: No",
     "0000:01:00.0", "95", "fatal"),
    # stas00/ml-engineering debug.md
    ("NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to "
     "activate.", "0000:10:1c.0", "63", "warning"),
    # NVIDIA/open-gpu-kernel-modules#1150 (a GB200 node)
    ("NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000001 caused by previous Xid 149",
     "0000:dc:00.0", "45", "info"),
    # leptonai/gpud PR #1160: NVLink 5 Xids carry the driver's own Fatal/Nonfatal word
    ("NVRM: Xid (PCI:0000:01:00): 144, SAW_MVB Nonfatal XC0 i0 Link 0 (0x00000001 0x00000008 0x00000000 "
     "0x00000000 0x00000000 0x00000000)", "0000:01:00.0", "144", "warning"),
    ("NVRM: Xid (PCI:0000:00:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x026001c6 0x00000000 0x00000000 "
     "0x00000000 0x00000000 0x00000000)", "0000:00:00.0", "149", "fatal"),
    # plexus.company Xid guide: GSP RPC timeout with pid='N/A'
    ("NVRM: Xid (PCI:0000:65:00): 119, pid='N/A', Timeout waiting for RPC from GSP", "0000:65:00.0", "119",
     "fatal"),
    # public logs quoted in NVSentinel/dra-driver tests: the recovery-action Xid (R570+)
    ("NVRM: Xid (PCI:0009:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)",
     "0009:01:00.0", "154", "fatal"),
    ("NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot "
     "Required)", "0000:01:00.0", "154", "fatal"),
]


@pytest.mark.parametrize("line,pci,code,severity", REAL_XIDS)
def test_real_xid_lines(line, pci, code, severity):
    (ev,) = one(line)
    assert (ev.kind, ev.pci, ev.code, ev.severity) == ("xid", pci, code, severity)
    assert ev.key == "kmsg:7" and ev.text.startswith("NVRM: Xid")


def test_xid_details_pid_process_and_mig_instance():
    (ev,) = one("NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 13, pid=9, name=a, Graphics Exception")
    assert ev.partition == "1" and ev.details == {"pid": "9", "process": "a"}
    (ev,) = one("NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics Exception")
    assert ev.details == {}  # "<unknown>" is no pid


def test_xid_in_a_journal_line_and_with_a_dmesg_timestamp():
    """Lines pasted from journalctl or dmesg keep their prefix; the Xid is found anyway."""
    (ev,) = one("Feb 15 17:37:45 Gipfeli kernel: [82659.755847] NVRM: Xid (PCI:0000:41:00): 13, Graphics "
                "Exception: ESR 0x5067b0=0x9")
    assert ev.code == "13" and ev.text.startswith("NVRM: Xid")


def test_recovery_action_back_to_none_is_a_recovery():
    (ev,) = one("NVRM: Xid (PCI:0000:04:00): 154, GPU recovery action changed from 0x1 (GPU Reset Required) "
                "to 0x0 (None)")
    assert ev.recovers and ev.severity == "info" and ev.details["recovery_action"] == "None"
    (ev,) = one("NVRM: Xid (PCI:0000:04:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset "
                "Required)")
    assert not ev.recovers and ev.severity == "fatal" and "reset" in ev.action


@pytest.mark.parametrize("text,pci", [
    # NVIDIA/NVSentinel#155: the multi-line probe-time message (one record: \x0a-escaped newlines in kmsg)
    ("NVRM: The NVIDIA GPU 0000:b3:00.0\n               NVRM: (PCI ID: 10de:26b5) installed in this system has\n"
     "               NVRM: fallen off the bus and is not responding to commands.", "0000:b3:00.0"),
    # public Xid 79 logs: the line the driver prints right after the Xid
    ("NVRM: GPU 0000:04:00.0: GPU has fallen off the bus.", "0000:04:00.0"),
    # pastebin C4RfJB4y (older driver)
    ("NVRM: GPU at 0000:01:00.0 has fallen off the bus.", "0000:01:00.0"),
])
def test_fallen_off_the_bus_without_an_xid_counts_as_xid_79(text, pci):
    (ev,) = one(text)
    assert (ev.kind, ev.code, ev.severity, ev.pci, ev.fallen_off_bus) == ("xid", "79", "fatal", pci, True)


AMD = [
    # ROCm/legacy-rocm-build#4021 (MI300X)
    ("amdgpu 0000:1c:00.0: {1}uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!",
     "ras", "uncorrectable", "fatal"),
    # an MI100 log (2023) quoted in a public issue: the older spelling with "amdgpu:" and no sequence number
    ("amdgpu 0000:e3:00.0: amdgpu: uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!",
     "ras", "uncorrectable", "fatal"),
    # amdgpu_ras.c dev_info("%ld uncorrectable hardware errors detected in %s block")
    ("amdgpu 0000:01:00.0: amdgpu: 2 uncorrectable hardware errors detected in umc block", "ras",
     "uncorrectable", "fatal"),
    ("amdgpu 0000:0b:00.0: 1048560 correctable hardware errors detected in umc block", "ras", "correctable", "info"),
    # amdgpu ras_mgr (2025): "{%llu} socket: %d, die: %d, %u new ... hardware errors detected in %s block"
    ("amdgpu 0000:0c:00.0: amdgpu: {3} socket: 0, die: 1, 1 new deferred hardware errors detected in umc block",
     "ras", "deferred", "warning"),
    # many public logs (amdgpu_device.c)
    ("amdgpu 0000:83:00.0: amdgpu: GPU reset(1) succeeded!", "reset", "ok", "info"),
    ("amdgpu 0000:05:00.0: amdgpu: GPU reset succeeded, trying to resume", "reset", "ok", "info"),
    ("amdgpu 0000:06:00.0: amdgpu: GPU reset(2) failed", "reset", "failed", "fatal"),
]


@pytest.mark.parametrize("line,kind,code,severity", AMD)
def test_real_amdgpu_lines(line, kind, code, severity):
    (ev,) = one(line)
    assert (ev.kind, ev.code, ev.severity) == (kind, code, severity)
    assert ev.pci == normalize_pci(line.split()[1].rstrip(":"))
    assert ev.recovers == (kind == "reset" and code == "ok")


@pytest.mark.parametrize("line", [
    # the all-clear contains the fault's words (a public test suite's regression case): not an error
    "amdgpu 0000:c3:00.0: amdgpu: no uncorrectable hardware errors detected in umc block",
    # running totals repeat the "new" line's errors: counting them would double-count
    "amdgpu 0000:0c:00.0: amdgpu: {3} socket: 0, die: 1, 4 uncorrectable hardware errors detected in total in umc "
    "block",
    "amdgpu 0000:e3:00.0: amdgpu: GPU reset begin!",
    "amdgpu 0000:06:00.0: amdgpu: GPU reset end with ret = -110",
    "amdgpu 0000:42:00.0: {1}[Hardware Error]: aca entry[00].STATUS=0x98000800003e0000",
    "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build",
    "nvidia-peermem nv_get_p2p_free_callback:127 ERROR detected invalid context, skipping further processing",
    "mlx5_core 0000:ab:00.0 mlx5_5: Port: 1 Link ACTIVE",
])
def test_lines_that_are_not_gpu_events(line):
    assert one(line) == []


def test_operator_reset_acknowledgement():
    (ev,) = one("vigil: gpu reset 0000:3B:00.0")
    assert (ev.kind, ev.code, ev.recovers, ev.pci, ev.all_gpus) == ("reset", "ok", True, "0000:3b:00.0", False)
    (ev,) = one("vigil: gpu reset all")
    assert ev.all_gpus and ev.pci is None


def test_events_are_dated_from_boot_time():
    (ev,) = one("NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", btime=1_700_000_000.0)
    assert ev.at == pytest.approx(1_700_000_000.0 + 1843.308145)
    (ev,) = one("NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus")
    assert ev.at is None


def test_xid_severity_override():
    (ev,) = one("NVRM: Xid (PCI:0000:cb:00): 109, pid=1, name=a, Ch 00000008", overrides={"109": "warning"})
    assert ev.severity == "warning"


# -- record framing ---------------------------------------------------------------------------------------

def test_kmsg_records_properties_and_escapes():
    text = ("6,2216,1844104877,-;pcieport 0000:00:01.0: AER: Multiple Uncorrectable (Non-Fatal) error message\n"
            " SUBSYSTEM=pci\n"
            " DEVICE=+pci:0000:00:01.0\n"
            "4,2217,1844104900,c;NVRM: The NVIDIA GPU 0000:b3:00.0\\x0a NVRM: fallen off the bus.\n")
    recs = kmsg.parse_text(text)
    assert [(r.seq, r.usec, r.priority) for r in recs] == [(2216, 1844104877, 6), (2217, 1844104900, 4)]
    assert "SUBSYSTEM" not in recs[0].text
    assert recs[1].text == "NVRM: The NVIDIA GPU 0000:b3:00.0\n NVRM: fallen off the bus."


def test_record_with_extra_header_fields():
    """Kernels since 5.10 may append fields after the flags ("...,-,caller=T123;msg")."""
    rec = kmsg.parse_record("4,10,20,-,caller=T1234;NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus\n")
    assert rec is not None and rec.seq == 10 and rec.text.startswith("NVRM")
    assert kmsg.parse_record(" SUBSYSTEM=pci") is None


def test_dmesg_and_plain_lines_are_accepted_with_line_numbers():
    text = ("[  918.654913] amdgpu 0000:15:00.0: {1}uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) "
            "detected!\n"
            "<4>[ 1843.308145] NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus\n"
            "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0\n"
            "               NVRM: (PCI ID: 10de:26b5) installed in this system has\n"
            "               NVRM: fallen off the bus and is not responding to commands.\n"
            "Sep 14 20:30:27 host kernel: NVRM: Xid (PCI:0000:01:00): 79, pid=0, GPU has fallen off the bus.\n")
    recs = kmsg.parse_text(text)
    assert [r.seq for r in recs] == [1, 2, 3, 6]
    assert recs[0].usec == 918_654_913 and recs[1].priority == 4 and recs[3].usec is None
    assert "fallen off the bus and is not responding" in recs[2].text
    kinds = [e.code for r in recs for e in kmsg.events(r)]
    assert kinds == ["uncorrectable", "79", "79", "79"]


def test_live_dev_kmsg_records_parse():
    """The real /dev/kmsg of this machine (skipped where it cannot be read): every record parses, and the
    sequence numbers only grow."""
    import os
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        pytest.skip(f"/dev/kmsg not readable here: {e}")
    seqs = []
    try:
        while len(seqs) < 2000:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue
            rec = kmsg.parse_record(chunk.decode(errors="replace").split("\n", 1)[0])
            assert rec is not None, chunk[:200]
            seqs.append(rec.seq)
    finally:
        os.close(fd)
    assert seqs and seqs == sorted(seqs)
