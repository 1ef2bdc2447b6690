"""The vendor-tool runner against fake SMI tools that misbehave the way real ones do (issue 12, items 5-7):
real executable scripts on PATH, run by the real runner, hanging, flooding, escaping their process group,
printing bytes that are not UTF-8, and stuck in the kernel (a frozen cgroup: D state, SIGKILL pending)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.base import tools
from agent.base.collector import Context
from agent.base.config import Expectations
from agent.base.findings import node_status
from agent.base.roots import Roots
from agent.run.loop import exposition
from agent.run.runner import CollectorRunner
from agent.sources.gpu.amd_smi_cli import AmdSmiCliBackend
from agent.sources.gpu.collector import GpuCollector, GpuSettings
from tests.gpu.helpers import (alive, fake_tool, freezer_cgroup, freezing_body, our_zombies, state, thaw,
                               wait_for)
from tests.support import AGENT, FIXTURES, ROOT

HEALTHY = FIXTURES / "mi300x-rocm71-healthy" / "amd-smi"


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return d


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every test ends with no tool process left in the runner's registry (a frozen one would refuse the next
    test's amd-smi)."""
    yield
    assert wait_for(lambda: not tools.left_behind()), tools.left_behind()


def gpu_runner(**settings) -> CollectorRunner:
    ctx = Context(Roots(Path("/nonexistent/sys"), Path("/nonexistent/proc")), "n1", Expectations(gpus=8))
    defaults = dict(backend="amd-smi", smi_timeout_seconds=0.5, timeout_seconds=10)
    return CollectorRunner(GpuCollector(GpuSettings(**{**defaults, **settings}), ctx))


def run_cli(*args, env=None, timeout=60):
    return subprocess.run([AGENT, "--once", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- item 7: bytes that are not UTF-8 -----------------------------------------------------------------------
def test_non_utf8_output_with_a_nonzero_exit_reports_the_exit_status_and_the_tools_last_stderr_line(bin_dir):
    """Was: `UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff`, the tool's own words lost."""
    fake_tool(bin_dir, textwrap.dedent("""\
        printf 'partial \\377\\376 output\\n'
        printf 'amdsmi: probing\\n' >&2
        printf 'ERROR: GPU 3 \\351 not responding (AMDSMI_STATUS_DRV_ERR)\\n' >&2
        exit 3
        """))
    with pytest.raises(tools.ToolFailed) as e:
        tools.run_tool(["amd-smi", "metric", "--json"], 5)
    assert e.value.returncode == 3
    assert str(e.value) == "amd-smi metric --json exited 3: ERROR: GPU 3 \ufffd not responding (AMDSMI_STATUS_DRV_ERR)"
    inv = AmdSmiCliBackend(timeout=5).read()
    assert inv.gpus == [] and len(inv.errors) == 7
    assert all(" exited 3: ERROR: GPU 3 \ufffd not responding" in err for err in inv.errors)
    assert not any("UnicodeDecodeError" in err for err in inv.errors)


def test_a_stray_non_utf8_byte_in_good_json_costs_that_character_only(bin_dir, tmp_path):
    static = tmp_path / "static.json"
    static.write_bytes((HEALTHY / "static.json").read_bytes().replace(b"AMD Instinct MI300X", b"AMD Instinct\xe9"))
    fake_tool(bin_dir, f'if [ "$1" = static ]; then cat "{static}"; else cat "{HEALTHY}/$1.json"; fi\n')
    inv = AmdSmiCliBackend(timeout=5).read()
    assert inv.errors == [] and len(inv.gpus) == 8
    assert inv.gpus[0].model == "AMD Instinct\ufffd"


# -- item 6: a flood ---------------------------------------------------------------------------------------
def test_a_flooding_command_is_killed_at_the_cap_and_its_checks_are_unknown(bin_dir, tmp_path):
    pidfile = tmp_path / "flood.pid"
    fake_tool(bin_dir, f'if [ "$1" = metric ]; then echo $$ > "{pidfile}"; exec yes "[{{}}, {{}}, {{}}]"; fi\n'
                       f'cat "{HEALTHY}/$1.json"\n')
    runner = gpu_runner(smi_timeout_seconds=30, smi_max_output_bytes=1024 * 1024)
    result = runner.run_once()
    assert not alive(int(pidfile.read_text()))  # killed at the cap, not left printing until the deadline
    assert not result.success  # vigil_collector_success 0: part of the source was not read
    findings = {(f.check, f.entity): f for f in result.output.findings}
    ecc = findings[("gpu.ecc.uncorrectable", "gpu3")]
    assert (ecc.status, ecc.severity) == ("unknown", "fatal")
    assert "amd-smi metric --json printed more than 1 MiB on stdout (the cap)" in ecc.message
    assert "gpu.smi_max_output_bytes" in ecc.message
    assert findings[("gpu.pages.retired", "gpu3")].status == "ok"  # the other commands still count
    assert node_status(result.output.findings) == "unknown"


def test_the_output_cap_is_a_setting_and_range_checked(tmp_path):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("gpu:\n  smi_max_output_bytes: 4194304\n")
    assert run_cli("--config", str(cfg), "--snapshot", "mi300x-rocm71-healthy").returncode == 0
    cfg.write_text("gpu:\n  smi_max_output_bytes: 1073741824\n")  # 1 GiB: over the 256 MiB bound
    p = run_cli("--config", str(cfg), "--snapshot", "mi300x-rocm71-healthy")
    assert p.returncode == 78 and "gpu.smi_max_output_bytes: must be an integer within" in p.stderr


def test_memory_stays_bounded_while_a_tool_floods(bin_dir):
    """A hard cap, with generous margins: three runs of a tool printing 200 MB each. Before the cap the whole
    output was held (bytes, then str: ~430 MB peak); now a run holds at most the 16 MiB cap."""
    fake_tool(bin_dir, "exec head -c 200000000 /dev/zero\n", name="flood-smi")
    script = textwrap.dedent("""\
        from agent.base import tools
        for _ in range(3):
            try:
                tools.run_tool(["flood-smi"], 30)
            except tools.ToolOutputTooLarge:
                pass
        # VmHWM, this program's own peak (ru_maxrss would carry the forking pytest's peak across exec)
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(int(status["VmHWM"].split()[0]) // 1024)
        """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) < 150, f"peak RSS {p.stdout.strip()} MiB"


# -- item 5: hangs, escapes, stuck processes --------------------------------------------------------------
def test_a_hung_cli_is_smi_unresponsive_fatal_whichever_deadline_fires(bin_dir, tmp_path):
    """The CLI's own timeout (0.5 s) fires before the collector's (10 s): it was `gpu.collector` unknown,
    exit 2; a stuck SMI is `gpu.smi_unresponsive`, fatal, as when the collector's deadline fires."""
    pidfile = tmp_path / "smi.pid"
    fake_tool(bin_dir, f'echo $$ > "{pidfile}"\nexec sleep 300\n')
    result = gpu_runner().run_once()
    [f] = result.output.findings
    assert (f.check, f.status, f.severity) == ("gpu.smi_unresponsive", "unhealthy", "fatal")
    assert "amd-smi list --json did not finish in 0.5s" in f.message
    assert not alive(int(pidfile.read_text()))


def test_a_cli_still_running_at_the_collector_deadline_is_smi_unresponsive_too(bin_dir, tmp_path):
    once = tmp_path / "hung-once"
    fake_tool(bin_dir, f'if [ ! -e "{once}" ]; then touch "{once}"; exec sleep 300; fi\ncat "{HEALTHY}/$1.json"\n')
    runner = gpu_runner(timeout_seconds=0.3, smi_timeout_seconds=30)
    [f] = runner.run_once().output.findings
    assert (f.check, f.status, f.severity) == ("gpu.smi_unresponsive", "unhealthy", "fatal")
    tools.shutdown(refuse_new=False)  # the abandoned read's tool is still in flight: end it, as --once does
    runner._stuck.join(10)
    assert not runner._stuck.is_alive()


def test_a_helper_that_escapes_the_process_group_is_killed_and_nothing_accumulates(bin_dir, tmp_path):
    """amd-smi starts a helper in a session of its own (setsid) that keeps the pipe open. The process-group
    kill missed it: one orphan per cycle, without bound. The run's environment marker finds it."""
    pids = tmp_path / "escaped.pids"
    fake_tool(bin_dir, f'setsid sleep 300 &\necho $! >> "{pids}"\nexec sleep 300\n')
    runner = gpu_runner()
    for _ in range(3):
        [f] = runner.run_once().output.findings
        assert f.check == "gpu.smi_unresponsive"
    escaped = [int(p) for p in pids.read_text().split()]
    assert len(escaped) == 3
    assert wait_for(lambda: not any(alive(p) for p in escaped)), [(p, state(p)) for p in escaped]
    assert our_zombies() == []
    assert tools.left_behind() == []


def test_a_stuck_tool_is_left_behind_counted_never_started_twice_and_reaped_when_it_dies(bin_dir, tmp_path):
    counter, flag = tmp_path / "starts", tmp_path / "stuck"
    flag.touch()
    with freezer_cgroup() as group:
        fake_tool(bin_dir, f'if [ -e "{flag}" ]; then\n{freezing_body(group, counter)}fi\n'
                           f'echo x >> "{counter}"\ncat "{HEALTHY}/$1.json"\n')
        runner = gpu_runner()
        [first] = runner.run_once().output.findings
        assert first.check == "gpu.smi_unresponsive" and "left behind: pid" in first.message
        [stuck] = tools.left_behind()
        assert (stuck.tool, stuck.state, stuck.command) == ("amd-smi", "D", "amd-smi list --json")
        assert tools.stuck_counts()["amd-smi"] == 1
        text = exposition([], "n1", tools.stuck_counts()).decode()
        assert 'vigil_tool_stuck_processes{tool="amd-smi"} 1.0' in text

        [second] = runner.run_once().output.findings
        assert (second.check, second.status) == ("gpu.smi_unresponsive", "unhealthy")
        assert "not started" in second.message and f"pid {stuck.pid}" in second.message
        assert counter.read_text().count("x") == 1  # no second amd-smi was stacked on the stuck one

        flag.unlink()
        thaw(group)  # the driver lets go: the pending SIGKILL ends it, and it waits for us to reap it
        assert wait_for(lambda: state(stuck.pid) == "Z")
        healthy = runner.run_once()
        assert healthy.success, healthy.output.findings
        assert state(stuck.pid) is None and our_zombies() == []
        assert tools.stuck_counts()["amd-smi"] == 0
        count = next(f for f in healthy.output.findings if f.check == "gpu.count")
        assert (count.status, count.value) == ("ok", 8)


def write_config(tmp_path, **gpu) -> Path:
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("gpu:\n" + "".join(f"  {k}: {v}\n" for k, v in {"backend": "amd-smi", **gpu}.items()))
    return cfg


def test_once_says_what_it_left_behind(bin_dir, tmp_path):
    with freezer_cgroup() as group:
        fake_tool(bin_dir, freezing_body(group))
        cfg = write_config(tmp_path, smi_timeout_seconds=0.5)
        p = run_cli("--json", "--only", "gpu", "--config", str(cfg), env={"PATH": os.environ["PATH"]})
        assert p.returncode == 1, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        [left] = doc["left_behind"]
        assert (left["tool"], left["command"], left["state"]) == ("amd-smi", "amd-smi list --json", "D")
        assert state(left["pid"]) == "D"  # it outlived the agent, as the report says
        assert [f["check"] for f in doc["findings"] if f["status"] != "ok"] == ["gpu.smi_unresponsive"]
        table = run_cli("--only", "gpu", "--config", str(cfg))
        assert "left behind, still running after SIGKILL" in table.stdout
        assert "amd-smi list --json: pid" in table.stdout and "state D" in table.stdout


def test_once_ends_a_hung_tool_when_the_collector_deadline_fires_first(bin_dir, tmp_path):
    """The read was abandoned at the collector's 1 s deadline and `--once` exited, leaving amd-smi running
    until its own 60 s timeout that nobody was left to enforce."""
    pidfile = tmp_path / "smi.pid"
    fake_tool(bin_dir, f'echo $$ > "{pidfile}"\nexec sleep 300\n')
    cfg = write_config(tmp_path, timeout_seconds=1, smi_timeout_seconds=60)
    p = run_cli("--json", "--only", "gpu", "--config", str(cfg), timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert [f["check"] for f in json.loads(p.stdout)["findings"]] == ["gpu.smi_unresponsive"]
    assert not alive(int(pidfile.read_text()))
