"""vm.*, fs.* and kernel.* keys are host-global: the tuner is proven on them against an injected procfs root
(a temporary tree laid out like /proc/sys), never the host's. The collector, its metrics and the `agent --once`
command run as they do on a node."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from .helpers import AGENT, by_check, collector, make_procfs, one_pass, read_procfs

from agent.base.metrics import render
from agent.sources.tuner import procfs as procfs_io
from agent.sources.tuner.profile import default_profile

NODE = {"vm.max_map_count": "65530", "fs.file-max": "9223372036854775807", "fs.nr_open": "1048576",
        "fs.inotify.max_user_watches": "8192", "kernel.numa_balancing": "1",
        "net.ipv4.tcp_rmem": "4096\t131072\t6291456", "net.ipv4.tcp_congestion_control": "cubic"}
PROFILE = {"vm.max_map_count": 262144, "fs.file-max": 2097152, "fs.inotify.max_user_watches": 524288,
           "kernel.numa_balancing": {"value": 0, "policy": "exact"},
           "net.ipv4.tcp_rmem": "4096 87380 16777216",
           "net.ipv4.tcp_congestion_control": {"value": "bbr", "policy": "exact"}}


@pytest.fixture
def proc(tmp_path):
    return make_procfs(tmp_path / "proc", NODE)


def snapshot(root) -> dict[str, str]:
    return {k: read_procfs(root, k) for k in NODE}


def test_enforce_writes_each_drifting_key_and_confirms_it(proc):
    _, out = one_pass(collector({"mode": "enforce", "profile": PROFILE}, proc))
    assert snapshot(proc) == {**{k: v.replace("\t", " ") for k, v in NODE.items()},
                              "vm.max_map_count": "262144", "fs.inotify.max_user_watches": "524288",
                              "kernel.numa_balancing": "0", "net.ipv4.tcp_rmem": "4096 131072 16777216",
                              "net.ipv4.tcp_congestion_control": "bbr"}
    changed = by_check(out.findings, "sysctl.changed")
    assert changed["vm.max_map_count"].value == {"old": "65530", "new": "262144"}
    assert changed["kernel.numa_balancing"].message == "kernel.numa_balancing 1 -> 0 (exact; lowered)"
    assert set(changed) == {"vm.max_map_count", "fs.inotify.max_user_watches", "kernel.numa_balancing",
                            "net.ipv4.tcp_rmem", "net.ipv4.tcp_congestion_control"}  # fs.file-max was higher
    assert all(f.status == "ok" for f in by_check(out.findings, "sysctl.drift").values())
    assert out.metrics.value("vigil_sysctl_drift", key="vm.max_map_count") == 0


def test_fs_file_max_above_the_minimum_is_never_lowered(proc):
    one_pass(collector({"mode": "enforce", "profile": {"fs.file-max": 2097152}}, proc))
    assert read_procfs(proc, "fs.file-max") == "9223372036854775807"


@pytest.mark.parametrize("mode,verb", [("dry-run", "would raise"), ("report", "report mode, enforce would raise")])
def test_modes_that_do_not_write(proc, mode, verb):
    before = snapshot(proc)
    _, out = one_pass(collector({"mode": mode, "profile": PROFILE}, proc))
    assert snapshot(proc) == before
    drift = by_check(out.findings, "sysctl.drift")
    assert drift["vm.max_map_count"].message == f"vm.max_map_count 65530 -> 262144 (minimum; {verb})"
    assert (drift["vm.max_map_count"].status, drift["vm.max_map_count"].severity) == ("unhealthy", "warning")
    # tcp_rmem: the middle field is already above the minimum and stays as it is.
    assert drift["net.ipv4.tcp_rmem"].message.startswith(
        "net.ipv4.tcp_rmem 4096 131072 6291456 -> 4096 131072 16777216")
    assert not by_check(out.findings, "sysctl.changed")
    assert out.metrics.value("vigil_sysctl_drift", key="vm.max_map_count") == 1


def test_missing_key_is_unknown_and_the_rest_still_runs(proc):
    _, out = one_pass(collector({"mode": "enforce", "profile": {"vm.no_such_key": 5, "vm.max_map_count": 262144}},
                                proc))
    missing = by_check(out.findings, "sysctl.drift")["vm.no_such_key"]
    assert (missing.status, missing.message) == ("unknown", "vm.no_such_key: not present on this kernel")
    assert not proc.joinpath("sys", "vm", "no_such_key").exists()  # never created
    assert read_procfs(proc, "vm.max_map_count") == "262144"


def test_a_value_the_kernel_does_not_keep_is_a_failed_write(proc, monkeypatch):
    """Some keys clamp a value without an error; simulated by a write that leaves the file as it was."""
    monkeypatch.setattr(procfs_io, "write_text", lambda root, key, text: None)
    _, out = one_pass(collector({"mode": "enforce", "profile": {"vm.max_map_count": 262144}}, proc))
    write = by_check(out.findings, "sysctl.write")["vm.max_map_count"]
    assert write.message == "writing vm.max_map_count=262144 failed: the kernel kept 65530"
    assert out.metrics.value("vigil_tuner_writes_total", key="vm.max_map_count", result="failed") == 1
    assert out.metrics.value("vigil_sysctl_drift", key="vm.max_map_count") == 1


def test_metrics_fields_counters_and_exposition(proc):
    c = collector({"mode": "enforce", "profile": PROFILE}, proc)
    _, first = one_pass(c)
    proc.joinpath("sys", "vm", "max_map_count").write_text("65530\n")  # something lowers it again
    _, out = one_pass(c)
    m = out.metrics
    assert m.value("vigil_tuner_writes_total", key="vm.max_map_count", result="ok") == 2  # counted across passes
    assert m.value("vigil_tuner_writes_total", key="fs.file-max", result="ok") == 0
    assert m.value("vigil_sysctl_value", key="net.ipv4.tcp_rmem", field="2") == 16777216
    assert m.value("vigil_sysctl_desired", key="net.ipv4.tcp_rmem", field="1") == 87380
    assert m.value("vigil_sysctl_value", key="vm.max_map_count", field="") == 262144
    assert m.value("vigil_sysctl_value_info", key="net.ipv4.tcp_congestion_control", value="bbr") == 1
    assert m.value("vigil_sysctl_desired_info", key="net.ipv4.tcp_congestion_control", value="bbr") == 1
    assert m.value("vigil_tuner_info", mode="enforce", profile="config") == 1
    text = render(m).decode()
    assert 'vigil_sysctl_drift{key="vm.max_map_count"} 0.0' in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_once_without_tune_never_writes_even_in_enforce(proc):
    before = snapshot(proc)
    _, out = one_pass(collector({"mode": "enforce", "profile": PROFILE}, proc, once=True))
    assert snapshot(proc) == before
    assert "would raise" in by_check(out.findings, "sysctl.drift")["vm.max_map_count"].message


def test_file_limits_are_left_alone_under_an_injected_procfs(proc):
    """Only the live /proc has processes to prlimit: a tree under tmp must not reach the host's daemons."""
    c = collector({"mode": "enforce", "profile": {}, "file_limits": {"containerd": {"nofile": 1048576}}}, proc)
    reading, out = one_pass(c)
    assert reading.rlimits == [] and not [f for f in out.findings if f.check.startswith("sysctl.rlimit")]


# -- the agent command -------------------------------------------------------------------------------------
def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(AGENT), "--once", "--only", "sysctl", "--node-name", "n1", *args],
                          capture_output=True, text=True, timeout=60)


def test_once_prints_every_entry_and_writes_nothing(proc, tmp_path):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("sysctl:\n  mode: enforce\n  file_limits: {}\n  profile:\n"
                   "    vm.max_map_count: 262144\n    fs.nr_open: 1048576\n"
                   "    kernel.numa_balancing: {value: 0, policy: exact}\n")
    before = snapshot(proc)
    run = agent("-c", str(cfg), "--procfs", str(proc))
    assert run.returncode == 0, run.stderr  # drift is a warning: the node is still healthy
    assert snapshot(proc) == before
    assert "vm.max_map_count 65530 -> 262144 (minimum; would raise)" in run.stdout
    assert "kernel.numa_balancing 1 -> 0 (exact; would lower)" in run.stdout
    assert "fs.nr_open 1048576 (minimum 1048576; ok)" in run.stdout
    assert "tuner mode dry-run (--once writes only with --tune)" in run.stdout  # why nothing was written

    tuned = agent("-c", str(cfg), "--procfs", str(proc), "--tune", "--json")
    assert tuned.returncode == 0, tuned.stderr
    assert read_procfs(proc, "vm.max_map_count") == "262144"
    assert read_procfs(proc, "kernel.numa_balancing") == "0"
    events = [f for f in json.loads(tuned.stdout)["findings"] if f["check"] == "sysctl.changed"]
    assert {e["entity"]: e["value"] for e in events} == {"vm.max_map_count": {"old": "65530", "new": "262144"},
                                                         "kernel.numa_balancing": {"old": "1", "new": "0"}}


def test_once_with_the_shipped_profile_shows_each_default_entry(tmp_path):
    """No profile in the config: every entry of gpu-training.yaml is checked (here against a tree that holds
    the kernel's stock values), and --tune raises them in that tree."""
    keys = default_profile()["profile"]
    proc = make_procfs(tmp_path / "proc", {k: "1" for k in keys} | {"net.ipv4.tcp_rmem": "4096 87380 6291456",
                                                                  "net.ipv4.tcp_wmem": "4096 16384 4194304"})
    run = agent("--procfs", str(proc), "--json")
    assert run.returncode == 0, run.stderr
    entities = {f["entity"] for f in json.loads(run.stdout)["findings"] if f["check"] == "sysctl.drift"}
    assert entities == set(keys)
    assert read_procfs(proc, "vm.max_map_count") == "1"  # the shipped mode is report
    tuned = agent("--procfs", str(proc), "--tune")
    assert tuned.returncode == 0, tuned.stderr
    assert read_procfs(proc, "vm.max_map_count") == "262144"
    assert read_procfs(proc, "net.ipv4.tcp_wmem") == "4096 65536 16777216"
    assert read_procfs(proc, "kernel.numa_balancing") == "0"


def test_a_snapshot_replay_is_never_written(tmp_path):
    snap = tmp_path / "snap"
    make_procfs(snap / "proc", {"vm.max_map_count": "65530"})
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("sysctl:\n  file_limits: {}\n  profile:\n    vm.max_map_count: 262144\n    fs.aio-max-nr: 1048576\n")
    run = agent("-c", str(cfg), "--snapshot", str(snap), "--tune", "-v")
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_procfs(snap / "proc", "vm.max_map_count") == "65530"
    assert "vm.max_map_count 65530 -> 262144 (minimum; would raise)" in run.stdout
    assert "fs.aio-max-nr" not in run.stdout  # not captured in the snapshot: says nothing about the node
