"""`agent --once` on the event fixtures, as an operator runs it (fixtures/nodes/h100-xid79, h100-xid13,
mi300x-cper; each README says what is real and what is modelled)."""
from __future__ import annotations

import json
import subprocess

from tests.support import AGENT, FIXTURES


def once(*args):
    return subprocess.run([AGENT, "--once", *args], capture_output=True, text=True, timeout=120)


def rows(table: str) -> list[list[str]]:
    return [line.split(None, 3) for line in table.splitlines()[3:] if line.strip()]


def test_xid79_node_exits_1_with_a_fatal_xid_row():
    p = once("--snapshot", str(FIXTURES / "h100-xid79"))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "UNHEALTHY" in p.stdout.splitlines()[0]
    first = rows(p.stdout)[0]
    assert first[:3] == ["gpu.xid", "gpu0", "FATAL"]
    assert "Xid 79" in first[3] and "fallen off the bus" in first[3] and "reboot" in first[3]


def test_xid79_json():
    p = once("--json", "--snapshot", str(FIXTURES / "h100-xid79"))
    doc = json.loads(p.stdout)
    x, info = [f for f in doc["findings"] if f["check"] == "gpu.xid"]  # the check's state, then the event
    assert (x["entity"], x["status"], x["severity"], x["value"]) == ("gpu0", "unhealthy", "fatal", 79)
    assert (info["severity"], info["value"]) == ("info", 13)  # the application faults of the boot, once
    assert x["action"].startswith("drain the node and reboot it")


def test_application_fault_node_exits_0_with_an_info_row():
    p = once("--snapshot", str(FIXTURES / "h100-xid13"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "HEALTHY" in p.stdout.splitlines()[0]
    (row,) = [r for r in rows(p.stdout) if r[0] == "gpu.xid"]
    assert row[1:3] == ["gpu0", "INFO"] and "Xid 13" in row[3] and "3 events" in row[3]


def test_amd_cper_node():
    p = once("--json", "--snapshot", str(FIXTURES / "mi300x-cper"))
    assert p.returncode == 1
    got = {(f["check"], f["entity"]): (f["status"], f["severity"]) for f in json.loads(p.stdout)["findings"]
           if f["check"] in ("gpu.cper", "gpu.ras", "gpu.reset")}
    assert got[("gpu.cper", "gpu1")] == ("unhealthy", "fatal")
    assert got[("gpu.ras", "gpu1")] == ("unhealthy", "fatal")
    assert got[("gpu.cper", "gpu0")] == ("unhealthy", "info")  # BOOT record: never marks the GPU
    assert got[("gpu.ras", "gpu3")] == ("unhealthy", "info")  # recovered by the driver's reset
    assert got[("gpu.reset", "gpu3")] == ("unhealthy", "info")
    assert got[("gpu.cper", "gpu5")] == ("ok", "fatal")


def test_nodes_without_event_captures_are_unchanged():
    """A snapshot without kmsg.txt or amd-smi/cper/ has no event source: no gpu.xid rows, same exit status."""
    p = once("--json", "--snapshot", str(FIXTURES / "h100-nvidia"))
    assert p.returncode == 0
    assert not [f for f in json.loads(p.stdout)["findings"] if f["check"].startswith(("gpu.xid", "gpu.events"))]
