"""The `sysctl` config section: every bad key or value is refused at load with a message naming it, and the
shipped default profile is valid and used when the config gives none."""
from __future__ import annotations

import math
import re
import subprocess

import pytest
from .helpers import AGENT, REPO

from agent.sources.tuner.collector import SysctlSettings
from agent.base.config import ConfigError, build, load
from agent.run.loop import collector_schemas


def settings(section: dict) -> SysctlSettings:
    return build(SysctlSettings, section, "sysctl")


@pytest.mark.parametrize("section,message", [
    ({"profile": {"vm.max_map_count": {"value": 262144, "policy": "raise"}}},
     "sysctl.profile.vm.max_map_count.policy: must be one of 'minimum', 'exact', 'report'"),
    ({"profile": {"net.ipv4.tcp_congestion_control": "bbr"}},
     "sysctl.profile.net.ipv4.tcp_congestion_control: policy 'minimum' needs numbers"),
    ({"profile": {"net.ipv4.tcp_congestion_control": {"value": "bbr"}}},
     "sysctl.profile.net.ipv4.tcp_congestion_control.value: policy 'minimum' needs numbers"),
    ({"profile": {"vm.max_map_count": 2.5}}, "sysctl.profile.vm.max_map_count: expected an integer or a string"),
    ({"profile": {"vm.overcommit_memory": True}}, "sysctl.profile.vm.overcommit_memory: expected an integer"),
    ({"profile": {"vm.max_map_count": {"value": 1, "polcy": "exact"}}},
     "sysctl.profile.vm.max_map_count.polcy: unknown key"),
    ({"profile": {"vm.max_map_count": {"policy": "exact"}}}, "sysctl.profile.vm.max_map_count.value: required"),
    ({"profile": {"../../etc/shadow": 1}}, "sysctl.profile.../../etc/shadow: not a sysctl key"),
    ({"profile": ["vm.max_map_count"]}, "sysctl.profile: expected a mapping"),
    ({"mode": "auto"}, "sysctl.mode: must be one of 'enforce', 'dry-run', 'report'"),
    ({"file_limits": {"containerd": {"nproc": 10}}}, "sysctl.file_limits.containerd.nproc: unknown resource"),
    ({"file_limits": {"containerd": {"nofile": {"soft": 2048, "hard": 1024}}}},
     "sysctl.file_limits.containerd.nofile.soft: must not exceed hard"),
    ({"file_limits": {"containerd": {"nofile": -5}}}, "sysctl.file_limits.containerd.nofile: expected a non-negative"),
    ({"file_limits": {"kubelet": {"nofile": {"soft": 1, "policy": "max"}}}},
     "sysctl.file_limits.kubelet.nofile.policy: must be one of"),
    ({"file_limits": {"kubelet": 1048576}}, "sysctl.file_limits.kubelet: expected a mapping of resource"),
])
def test_bad_entries_name_their_key(section, message):
    with pytest.raises(ConfigError) as e:
        settings(section)
    assert str(e.value).startswith(message), str(e.value)


def test_entry_forms():
    s = settings({"profile": {
        "vm.max_map_count": 262144,
        "net.ipv4.tcp_rmem": "4096 87380 16777216",
        "kernel.numa_balancing": {"value": 0, "policy": "exact"},
        "net.core.rmem_max": {"policy": "report"},
    }, "file_limits": {"containerd": {"nofile": 1048576, "memlock": {"soft": "unlimited"}}}})
    got = {e.key: (e.value, e.policy) for e in s.sysctl_entries}
    assert got == {"vm.max_map_count": ((262144,), "minimum"),
                   "net.ipv4.tcp_rmem": ((4096, 87380, 16777216), "minimum"),
                   "kernel.numa_balancing": ((0,), "exact"),
                   "net.core.rmem_max": (None, "report")}
    limits = {(e.process, e.resource): (e.soft, e.hard, e.policy) for e in s.rlimit_entries}
    assert limits == {("containerd", "nofile"): (1048576, 1048576, "minimum"),
                      ("containerd", "memlock"): (math.inf, None, "minimum")}


def test_the_shipped_profile_is_the_default_and_is_valid():
    s = settings({})
    assert s.mode == "report"  # a fresh install writes nothing
    keys = {e.key: e for e in s.sysctl_entries}
    assert keys["vm.max_map_count"].value == (262144,)
    assert keys["net.ipv4.tcp_rmem"].value == (4096, 87380, 16777216)
    assert keys["kernel.numa_balancing"].policy == "exact"
    assert {(e.process, e.resource) for e in s.rlimit_entries} >= {("containerd", "nofile"), ("containerd", "memlock")}
    # An explicit empty profile means none, not the default.
    assert settings({"profile": {}, "file_limits": {}}).sysctl_entries == []


def test_every_shipped_entry_has_a_reason():
    """The shipped profile says why each value is there: a comment above every entry (or its group)."""
    lines = (REPO / "agent" / "sources" / "tuner" / "profiles" / "gpu-training.yaml").read_text().splitlines()
    entry = re.compile(r"  [a-z][\w.-]*:")  # a sysctl key or a process name
    entries = [i for i, line in enumerate(lines) if entry.match(line)]
    assert len(entries) >= 15
    for i in entries:
        j = i - 1
        while j >= 0 and entry.match(lines[j]):  # related keys share one comment
            j -= 1
        assert lines[j].strip().startswith("#"), f"no reason above {lines[i].strip()!r}"


def test_the_agent_exits_78_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sysctl:\n  profile:\n    vm.max_map_count: {value: 262144, policy: raise}\n")
    proc = subprocess.run([str(AGENT), "--once", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "sysctl.profile.vm.max_map_count.policy: must be one of 'minimum', 'exact', 'report'" in proc.stderr


def test_the_section_loads_through_the_agent_config():
    cfg = load(None, collector_schemas(["sysctl"]),
               text="sysctl:\n  mode: enforce\n  profile:\n    fs.nr_open: 1048576\n")
    s = cfg.section("sysctl")
    assert s.mode == "enforce" and [e.key for e in s.sysctl_entries] == ["fs.nr_open"]


@pytest.mark.parametrize("section, reason", [
    ({}, "tuner mode report (the default)"),  # was "(set in the config)" with no config at all
    ({"mode": "report"}, "tuner mode report (set in the config)"),
])
def test_the_mode_finding_says_where_the_mode_came_from(tmp_path, section, reason):
    from .helpers import by_check, collector, make_procfs, one_pass

    c = collector({**section, "profile": {"vm.max_map_count": 262144}},
                  make_procfs(tmp_path / "proc", {"vm.max_map_count": "65530"}))
    _, out = one_pass(c)
    assert by_check(out.findings, "sysctl.mode")["test-node"].message == reason
