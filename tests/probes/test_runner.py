"""The probe runner through real child processes: fake `dcgmi` binaries replay published outputs, hang, flood
their output, or stop mid-run (no DCGM can be installed here: REAL-PARTS.md). Each is judged as a user
would need: a result only from a run that finished, never a pass from a timeout."""
import os
import time

import pytest

from agent.base import tools
from agent.probes import validate as v
from agent.probes.dcgm import Dcgm
from agent.probes.runner import ProbeContext
from tests.probes.helpers import PROBE_FIXTURES, fake_tool, replay, settings

D = PROBE_FIXTURES / "dcgm"


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


def run(tmp_path, body=None, fixture=None, code=0, timeout=30.0, **kw):
    bindir = tmp_path / "bin"
    path = replay(bindir, "dcgmi", fixture, code) if fixture else fake_tool(bindir, "dcgmi", body)
    s = settings(tmp_path, dcgm={"path": str(path), "quick_timeout_seconds": timeout})
    for k, val in kw.items():
        setattr(s, k, val)
    return Dcgm().run(ProbeContext("n1", s))


def checks(result):
    return {(f.check, f.entity): f for f in result.findings}


def test_a_passing_run_passes_and_says_how_long_it_took(tmp_path):
    r = run(tmp_path, fixture=D / "dcgm-3.1-pass-8gpu.txt")
    assert r.status == "pass"
    run_f = checks(r)[("probe.dcgm.run", "n1")]
    assert run_f.status == "ok" and run_f.value >= 0 and "10 tests on 8 GPUs" in run_f.message
    assert "diag -r 2 -j" in r.command  # quick = level 2


def test_a_failing_run_exits_non_zero_and_still_fails_its_gpu(tmp_path):
    r = run(tmp_path, fixture=D / "dcgm-4.x-fail-temperature.json", code=226)
    assert r.status == "fail"
    assert checks(r)[("probe.dcgm", "gpu0")].is_fatal
    assert checks(r)[("probe.dcgm.run", "n1")].status == "ok"


def test_a_hung_tool_is_killed_at_its_deadline_and_its_output_is_not_a_result(tmp_path):
    # prints a complete passing report, then hangs: the report must not count
    body = f'cat "{D / "dcgm-3.1-pass-8gpu.txt"}"\nexec sleep 1000'
    t0 = time.monotonic()
    r = run(tmp_path, body=body, timeout=1.5)
    assert time.monotonic() - t0 < 10
    assert r.status == "unknown"
    assert not any(f.status == "ok" for f in r.findings)
    assert "did not finish in 1.5s" in checks(r)[("probe.dcgm.run", "n1")].message
    assert not tools.left_behind()  # killed and reaped


def test_a_flood_is_cut_at_the_cap(tmp_path):
    r = run(tmp_path, body="exec yes '{\"DCGM Diagnostic\": '", max_output_bytes=1 << 20)
    assert r.status == "unknown"
    assert "more than 1 MiB" in checks(r)[("probe.dcgm.run", "n1")].message


def test_a_tool_that_dies_mid_run_is_unknown(tmp_path):
    text = (D / "dcgm-4.x-fail-temperature.json").read_text()
    half = tmp_path / "half.json"
    half.write_text(text[:300])
    r = run(tmp_path, body=f'cat "{half}"\necho "Segmentation fault" >&2\nexit 139')
    assert r.status == "unknown"
    msg = checks(r)[("probe.dcgm.run", "n1")].message
    assert "incomplete" in msg and "exit 139" in msg and "Segmentation fault" in msg


def test_an_escaped_child_is_killed_too(tmp_path):
    marker = tmp_path / "escaped.pid"
    body = f'setsid sh -c \'echo $$ > "{marker}"; exec sleep 1000\' &\nexec sleep 1000'
    r = run(tmp_path, body=body, timeout=1.0)
    assert r.status == "unknown"
    pid = int(marker.read_text())
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the escaped child is still running")


def test_missing_tool_is_unavailable_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    s = settings(tmp_path, builtin={"enabled": False})  # the built-in probe would run on this CPU
    val = v.validate(s, force=True, node="n1")
    assert val.results[0].status == "unavailable" and "dcgmi not on PATH" in val.absent["dcgm"]
    # nothing could be validated at all: unknown, exit 2
    assert val.exit_code() == 2 and any(f.check == "probe.coverage" for f in val.findings)


def test_missing_tool_asked_for_by_name_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    val = v.validate(settings(tmp_path), ["dcgm"], force=True, node="n1")
    assert val.exit_code() == 2 and "not run: dcgmi not on PATH" in val.findings[0].message


@pytest.mark.parametrize("name", ["dcgm", "rvs", "agfhc", "nccl", "perftest"])
def test_a_configured_tool_that_is_not_there_is_not_available_never_a_failure(tmp_path, name):
    s = settings(tmp_path, **{name: {"path": str(tmp_path / "nope" / name)}})
    val = v.validate(s, None, node="n1", force=True)
    assert name in val.absent and val.exit_code() != 1
    val = v.validate(s, [name], node="n1", force=True)  # asked for by name: it could not run
    assert val.exit_code() == 2 and "not found" in val.findings[0].message


def test_found_on_path_by_its_usual_name(tmp_path, monkeypatch):
    args = tmp_path / "args"
    replay(tmp_path / "bin", "dcgmi", D / "dcgm-3.1-pass-8gpu.txt", args_log=args)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    val = v.validate(settings(tmp_path), ["dcgm"], level="full", force=True, node="n1")
    assert val.exit_code() == 0
    assert args.read_text().split() == ["diag", "-r", "3", "-j"]  # full = level 3


def test_an_adapter_that_raises_costs_only_its_probe(tmp_path, monkeypatch):
    from agent.probes.nccl import Nccl

    def boom(self, binary, ctx):
        raise KeyError("bug")
    monkeypatch.setattr(Nccl, "commands", boom)
    tool = replay(tmp_path / "bin", "all_reduce_perf", D / "dcgm-3.1-pass-8gpu.txt")
    dcgmi = replay(tmp_path / "bin", "dcgmi", D / "dcgm-3.1-pass-8gpu.txt")
    s = settings(tmp_path, nccl={"path": str(tool)}, dcgm={"path": str(dcgmi)})
    val = v.validate(s, ["nccl", "dcgm"], force=True, node="n1")
    status = {r.name: r.status for r in val.results}
    assert status == {"nccl": "unknown", "dcgm": "pass"} and "internal error" in val.results[0].findings[0].message
