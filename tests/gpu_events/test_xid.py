"""The Xid catalogue: the severities an operator relies on (NVIDIA's Xid catalog, docs.nvidia.com/deploy/xid-errors)."""
from __future__ import annotations

import pytest

from agent.sources.gpu_events import xid


@pytest.mark.parametrize("code", [13, 31, 43])
def test_application_faults_are_info(code):
    """DESIGN §2: Xid 13, 31 and 43 are application faults. They must never cordon a node."""
    info = xid.lookup(code)
    assert info.severity == "info" and "application" in info.action


@pytest.mark.parametrize("code,action_word", [
    (48, "reset"), (79, "reboot"), (95, "reset"), (119, "reset"), (120, "reset"), (74, "nvlink"), (64, "replace"),
    (46, "reset"), (140, "reset"),
])
def test_hardware_faults_are_fatal_with_an_action(code, action_word):
    info = xid.lookup(code)
    assert info.severity == "fatal"
    assert action_word in info.action.lower()


@pytest.mark.parametrize("code", [63, 92, 94])
def test_memory_warnings(code):
    """Row remap pending (63), high single-bit rate (92), contained ECC error (94): the GPU needs attention, the
    node stays schedulable."""
    assert xid.lookup(code).severity == "warning"


def test_unknown_codes_warn_rather_than_guess_fatal():
    info = xid.lookup(999)
    assert (info.severity, info.known) == ("warning", False)
    assert "support" in info.action


@pytest.mark.parametrize("text,severity,recovered", [
    ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "fatal", False),
    ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "fatal", False),
    ("GPU recovery action changed from 0x0 (None) to 0x2 (OS Reboot)", "fatal", False),
    ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", "warning", False),
    ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", "fatal", False),
    ("GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)", "info", True),
])
def test_xid_154_follows_the_new_recovery_action(text, severity, recovered):
    info = xid.lookup(154, text)
    assert info.severity == severity
    change = xid.recovery_change(text)
    assert change is not None and change.recovered == recovered
    assert change.label == text.rsplit("(", 1)[1].rstrip(")")


def test_nvlink5_uses_the_drivers_own_fatality():
    assert xid.lookup(144, "SAW_MVB Nonfatal XC0 i0 Link 0 (0x00000001 0x00000008)").severity == "warning"
    assert xid.lookup(149, "NETIR_LINK_EVT Fatal XC0 i0 Link 00 (0x026001c6 0x00000000)").severity == "fatal"
    assert xid.lookup(145).severity == "warning"  # no word: not fatal by guess


def test_overrides_win_and_accept_ignore():
    assert xid.lookup(109, overrides={"109": "warning"}).severity == "warning"
    assert xid.lookup(13, overrides={"13": "ignore"}).severity == "ignore"
    assert xid.lookup(79, overrides={"13": "ignore"}).severity == "fatal"


def test_every_catalogued_code_has_a_valid_severity_and_an_action():
    for code in range(1, 170):
        info = xid.lookup(code)
        assert info.severity in ("fatal", "warning", "info"), code
        assert info.action, code
