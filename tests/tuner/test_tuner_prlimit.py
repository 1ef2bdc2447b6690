"""File limits on a real process: a child `sleep` started by the test under a name of its own (a copy of the
sleep binary), found by name like containerd would be, changed with prlimit through psutil, and read back from
/proc/PID/limits (the kernel's own account, not psutil's)."""
from __future__ import annotations

import resource
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from .helpers import by_check, collector, one_pass

from agent.base.metrics import render


@pytest.fixture
def daemon(tmp_path):
    """A process named vgl-<random> with nofile soft 1024, hard 8192 (lowering needs no privilege)."""
    name = f"vgl-{uuid.uuid4().hex[:8]}"
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)

    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8192))

    proc = subprocess.Popen([str(exe), "60"], preexec_fn=limits)
    try:
        yield name, proc.pid
    finally:
        proc.kill()
        proc.wait()


def kernel_limits(pid: int, what: str = "Max open files") -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(what):
            soft, hard = line[len(what):].split()[:2]
            return soft, hard
    raise AssertionError(f"{what} not in /proc/{pid}/limits")


def tune(name: str, spec, mode: str = "enforce"):
    # The live /proc: only then are processes looked up; the empty profile keeps host sysctls out of it.
    c = collector({"mode": mode, "profile": {}, "file_limits": {name: {"nofile": spec}}}, Path("/proc"))
    return one_pass(c)


def test_enforce_raises_the_soft_limit(daemon):
    name, pid = daemon
    _, out = tune(name, {"soft": 4096})
    assert kernel_limits(pid) == ("4096", "8192")
    drift = by_check(out.findings, "sysctl.rlimit.drift")[f"{name}/nofile"]
    assert drift.status == "ok"
    assert drift.message == f"{name} nofile soft 1024 hard 8192 -> soft 4096 hard 8192 (minimum; raised) [pid {pid}]"
    changed = by_check(out.findings, "sysctl.rlimit.changed")[f"{name}/nofile"]
    assert changed.value == {"pid": pid, "old": "soft 1024 hard 8192", "new": "soft 4096 hard 8192"}
    m = out.metrics
    assert m.value("vigil_process_rlimit", process=name, resource="nofile", kind="soft") == 4096
    assert m.value("vigil_process_rlimit_drift", process=name, resource="nofile") == 0
    assert m.value("vigil_tuner_rlimit_writes_total", process=name, resource="nofile", result="ok") == 1
    assert m.value("vigil_tuner_processes", process=name) == 1


def test_minimum_never_lowers(daemon):
    name, pid = daemon
    _, out = tune(name, {"soft": 512, "hard": 4096})
    assert kernel_limits(pid) == ("1024", "8192")
    assert by_check(out.findings, "sysctl.rlimit.drift")[f"{name}/nofile"].status == "ok"


def test_exact_lowers(daemon):
    name, pid = daemon
    tune(name, {"soft": 512, "hard": 4096, "policy": "exact"})
    assert kernel_limits(pid) == ("512", "4096")


@pytest.mark.parametrize("mode", ["dry-run", "report"])
def test_modes_that_do_not_write(daemon, mode):
    name, pid = daemon
    _, out = tune(name, {"soft": 4096}, mode)
    assert kernel_limits(pid) == ("1024", "8192")
    drift = by_check(out.findings, "sysctl.rlimit.drift")[f"{name}/nofile"]
    what = "(minimum; would raise)" if mode == "dry-run" else "(minimum; report mode, enforce would raise)"
    assert drift.status == "unhealthy" and f"-> soft 4096 hard 8192 {what}" in drift.message


def test_a_hard_limit_above_nr_open_fails_with_eperm(daemon):
    """The kernel refuses a nofile hard limit above fs.nr_open, even for root (and without root, any raise of
    the hard limit): a real EPERM from prlimit."""
    name, pid = daemon
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    _, out = tune(name, {"soft": 4096, "hard": nr_open + 1})
    assert kernel_limits(pid) == ("1024", "8192")
    write = by_check(out.findings, "sysctl.rlimit.write")[f"{name}/nofile"]
    assert write.value == "EPERM" and write.severity == "warning" and write.action
    assert by_check(out.findings, "sysctl.rlimit.drift")[f"{name}/nofile"].status == "unhealthy"


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE is capability 24
    return False


@pytest.mark.root
@pytest.mark.skipif(not has_cap_sys_resource(), reason="needs CAP_SYS_RESOURCE (root in CI; some sandboxes drop it)")
def test_root_raises_the_hard_limit_and_memlock(daemon):
    """Raising a hard limit needs CAP_SYS_RESOURCE: the privileged DaemonSet has it."""
    name, pid = daemon
    c = collector({"mode": "enforce", "profile": {},
                   "file_limits": {name: {"nofile": 65536, "memlock": "unlimited"}}}, Path("/proc"))
    one_pass(c)
    assert kernel_limits(pid) == ("65536", "65536")
    assert kernel_limits(pid, "Max locked memory") == ("unlimited", "unlimited")


def test_a_process_that_is_not_running_is_nothing_to_tune():
    name = f"vgl-absent-{uuid.uuid4().hex[:6]}"
    _, out = tune(name, 1048576)
    f = by_check(out.findings, "sysctl.rlimit.drift")[f"{name}/nofile"]
    assert (f.status, f.severity, f.message) == ("ok", "info", f"{name}: not running (nothing to tune)")
    assert out.metrics.value("vigil_tuner_processes", process=name) == 0
    assert out.metrics.value("vigil_process_rlimit_drift", process=name, resource="nofile") is None


def test_our_own_process_is_not_touched(daemon):
    """Only processes with the profile's name are changed: the test runner's own limits stay."""
    name, _ = daemon
    mine = resource.getrlimit(resource.RLIMIT_NOFILE)
    tune(name, {"soft": 4096})
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == mine


def test_rlimit_metrics_pass_promtool_with_unlimited(daemon):
    """memlock "unlimited" is exported as +Inf; the exposition stays valid for Prometheus."""
    name, pid = daemon
    c = collector({"mode": "dry-run", "profile": {}, "file_limits": {name: {"memlock": "unlimited"}}}, Path("/proc"))
    _, out = one_pass(c)
    m = out.metrics
    assert m.value("vigil_process_rlimit_desired", process=name, resource="memlock", kind="hard") == float("inf")
    assert m.value("vigil_process_rlimit_drift", process=name, resource="memlock") == 1
    assert m.value("vigil_tuner_rlimit_writes_total", process=name, resource="memlock", result="dry_run") == 1
    assert kernel_limits(pid, "Max locked memory") != ("unlimited", "unlimited")
    text = render(m).decode()
    assert f'vigil_process_rlimit_desired{{kind="hard",process="{name}",resource="memlock"}} +Inf' in text
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
