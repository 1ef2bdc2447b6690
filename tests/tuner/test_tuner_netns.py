"""The tuner against the real kernel, inside network namespaces the tests create.

net.* sysctls are per network namespace, so a child process that joins one (os.setns) reads and writes the
real kernel's values without touching the host's: every test here asserts that the host's values are
unchanged afterwards. Needs root (ip netns add, setns); CI runs the suite as root.
"""
from __future__ import annotations

import pytest
from .helpers import in_netns, needs_ip, needs_root

pytestmark = [pytest.mark.root, needs_root, needs_ip, pytest.mark.usefixtures("host_net_untouched")]

SOMAXCONN, RMEM, CC, RMEM_MAX = ("net.core.somaxconn", "net.ipv4.tcp_rmem", "net.ipv4.tcp_congestion_control",
                                 "net.core.rmem_max")
KEYS = [SOMAXCONN, RMEM, CC, RMEM_MAX]


def fields(text: str) -> list[int]:
    return [int(f) for f in text.split()]


def sample(p: dict, name: str, **labels) -> float | None:
    for sname, slabels, v in p["metrics"]:
        if sname == name and all(slabels.get(k) == str(val) for k, val in labels.items()):
            return v
    return None


def finding(p: dict, check: str, entity: str) -> dict:
    found = [f for f in p["findings"] if f["check"] == check and f["entity"] == entity]
    assert len(found) == 1, (check, entity, p["findings"])
    return found[0]


def initial(netns: str) -> dict[str, str]:
    """A fresh namespace's values (copied from the host's at creation on this kernel, but read, not assumed)."""
    return in_netns(netns, {"config": {"profile": {}}, "passes": 0, "read": KEYS})["before"]


def run(netns: str, profile: dict, mode: str, passes: int = 1, **run_mode) -> dict:
    return in_netns(netns, {"config": {"mode": mode, "profile": profile}, "passes": passes, "read": KEYS,
                            "mode": run_mode})


def test_enforce_raises_a_namespaced_key_and_reads_it_back(netns):
    start = initial(netns)
    want = int(start[SOMAXCONN]) + 1000
    doc = run(netns, {SOMAXCONN: want}, "enforce")
    assert int(doc["after"][SOMAXCONN]) == want
    p = doc["passes"][0]
    drift = finding(p, "sysctl.drift", SOMAXCONN)
    assert drift["status"] == "ok"
    assert drift["message"] == f"{SOMAXCONN} {start[SOMAXCONN]} -> {want} (minimum; raised)"
    changed = finding(p, "sysctl.changed", SOMAXCONN)
    assert (changed["severity"], changed["value"]) == ("info", {"old": start[SOMAXCONN], "new": str(want)})
    assert sample(p, "vigil_sysctl_value", key=SOMAXCONN, field="") == want
    assert sample(p, "vigil_sysctl_drift", key=SOMAXCONN) == 0
    assert sample(p, "vigil_tuner_writes_total", key=SOMAXCONN, result="ok") == 1


def test_minimum_never_lowers_any_field(netns):
    """Declared tcp_rmem lower in min/max but higher in the middle field: only the middle field may move."""
    start = fields(initial(netns)[RMEM])
    declared = [start[0] - 1, start[1] + 4096, start[2] // 2]
    doc = run(netns, {RMEM: " ".join(map(str, declared))}, "enforce")
    assert fields(doc["after"][RMEM]) == [start[0], start[1] + 4096, start[2]]
    p = doc["passes"][0]
    assert sample(p, "vigil_sysctl_value", key=RMEM, field="1") == start[1] + 4096
    assert sample(p, "vigil_sysctl_desired", key=RMEM, field="2") == start[2] // 2


def test_minimum_already_satisfied_writes_nothing(netns):
    start = initial(netns)
    doc = run(netns, {SOMAXCONN: int(start[SOMAXCONN]) - 1}, "enforce")
    assert doc["after"][SOMAXCONN] == start[SOMAXCONN]
    p = doc["passes"][0]
    assert finding(p, "sysctl.drift", SOMAXCONN)["status"] == "ok"
    assert sample(p, "vigil_tuner_writes_total", key=SOMAXCONN, result="ok") == 0


def test_exact_lowers_and_sets_words(netns):
    start = initial(netns)
    lower = int(start[SOMAXCONN]) // 2
    cc = "reno" if start[CC] != "reno" else "cubic"
    doc = run(netns, {SOMAXCONN: {"value": lower, "policy": "exact"}, CC: {"value": cc, "policy": "exact"}},
              "enforce")
    assert int(doc["after"][SOMAXCONN]) == lower
    assert doc["after"][CC] == cc
    p = doc["passes"][0]
    assert finding(p, "sysctl.drift", SOMAXCONN)["message"].endswith("(exact; lowered)")
    assert finding(p, "sysctl.changed", CC)["value"] == {"old": start[CC], "new": cc}
    assert sample(p, "vigil_sysctl_value_info", key=CC, value=cc) == 1


def test_report_mode_never_writes(netns):
    start = initial(netns)
    want = int(start[SOMAXCONN]) + 1000
    doc = run(netns, {SOMAXCONN: want}, "report")
    assert doc["after"] == doc["before"]
    p = doc["passes"][0]
    drift = finding(p, "sysctl.drift", SOMAXCONN)
    assert (drift["status"], drift["severity"]) == ("unhealthy", "warning")
    assert "report mode" in drift["message"]
    assert sample(p, "vigil_sysctl_drift", key=SOMAXCONN) == 1
    assert sample(p, "vigil_tuner_writes_total", key=SOMAXCONN, result="dry_run") == 0


def test_report_policy_is_never_written_even_in_enforce(netns):
    start = initial(netns)
    doc = run(netns, {SOMAXCONN: {"value": int(start[SOMAXCONN]) + 1, "policy": "report"}}, "enforce")
    assert doc["after"][SOMAXCONN] == start[SOMAXCONN]
    assert finding(doc["passes"][0], "sysctl.drift", SOMAXCONN)["message"].endswith("(report; drift, never written)")


def test_dry_run_says_what_would_change_and_writes_nothing(netns):
    start = initial(netns)
    want = int(start[SOMAXCONN]) + 1000
    doc = run(netns, {SOMAXCONN: want, CC: {"value": "reno" if start[CC] != "reno" else "cubic",
                                            "policy": "exact"}}, "dry-run", passes=2)
    assert doc["after"] == doc["before"]
    p = doc["passes"][1]
    assert finding(p, "sysctl.drift", SOMAXCONN)["message"] == \
        f"{SOMAXCONN} {start[SOMAXCONN]} -> {want} (minimum; would raise)"
    assert finding(p, "sysctl.drift", CC)["message"].endswith("(exact; would set)")
    assert sample(p, "vigil_tuner_writes_total", key=SOMAXCONN, result="dry_run") == 2  # kept across passes
    assert not [f for f in p["findings"] if f["check"] == "sysctl.changed"]


def test_read_only_key_is_a_write_finding_retried_and_logged_once(netns):
    """net.core.rmem_max is read-only inside a namespace: a real EACCES from the kernel."""
    start = initial(netns)
    want = int(start[RMEM_MAX]) * 2
    doc = run(netns, {RMEM_MAX: want}, "enforce", passes=3)
    assert doc["after"][RMEM_MAX] == start[RMEM_MAX]
    p = doc["passes"][-1]
    write = finding(p, "sysctl.write", RMEM_MAX)
    assert (write["status"], write["severity"]) == ("unhealthy", "warning")
    assert write["value"] in ("EACCES", "EPERM", "EROFS")
    assert write["value"] in write["message"] and "action" in write
    assert finding(p, "sysctl.drift", RMEM_MAX)["status"] == "unhealthy"
    assert sample(p, "vigil_tuner_writes_total", key=RMEM_MAX, result="failed") == 3  # tried every pass
    assert len([w for w in doc["warnings"] if RMEM_MAX in w]) == 1  # ...and said once


@pytest.mark.parametrize("key,value,errno_name", [
    (SOMAXCONN, 2**31, "EINVAL"),  # beyond the kernel's int
    (CC, "vigil-no-such-cc", "ENOENT"),  # a congestion control the kernel does not have
])
def test_rejected_values_name_the_errno(netns, key, value, errno_name):
    start = initial(netns)
    doc = run(netns, {key: {"value": value, "policy": "exact"}}, "enforce")
    assert doc["after"][key] == start[key]
    assert finding(doc["passes"][0], "sysctl.write", key)["value"] == errno_name


def test_missing_key_is_unknown_not_a_crash(netns):
    doc = run(netns, {"net.ipv4.vigil_no_such_key": 1, SOMAXCONN: 1}, "enforce")
    p = doc["passes"][0]
    missing = finding(p, "sysctl.drift", "net.ipv4.vigil_no_such_key")
    assert missing["status"] == "unknown" and "not present on this kernel" in missing["message"]
    assert sample(p, "vigil_sysctl_drift", key="net.ipv4.vigil_no_such_key") is None
    assert finding(p, "sysctl.drift", SOMAXCONN)["status"] == "ok"  # the other entries still ran


def test_cli_once_writes_only_with_tune(netns, tmp_path):
    """The real `agent --once` inside the namespace: without --tune it only says what it would do."""
    start = initial(netns)
    want = int(start[SOMAXCONN]) + 1000
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"sysctl:\n  mode: enforce\n  file_limits: {{}}\n  profile:\n    {SOMAXCONN}: {want}\n")
    argv = ["--once", "--only", "sysctl", "-c", str(cfg), "--node-name", "ns"]
    dry = in_netns(netns, {"kind": "cli", "argv": argv, "read": KEYS})
    assert dry["exit"] == 0 and dry["after"] == dry["before"]
    assert f"{SOMAXCONN} {start[SOMAXCONN]} -> {want} (minimum; would raise)" in dry["stdout"]
    tuned = in_netns(netns, {"kind": "cli", "argv": [*argv, "--tune", "-v"], "read": KEYS})
    assert tuned["exit"] == 0 and int(tuned["after"][SOMAXCONN]) == want
    assert f"{SOMAXCONN} {start[SOMAXCONN]} -> {want} (minimum; raised)" in tuned["stdout"]
