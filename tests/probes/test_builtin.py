"""The built-in PyTorch probe, run for real: torch's CPU build is installed here (scripts/install-deps.sh), so
the child process, its JSON and the parent's judgement all run as on a node; only the GPU floors cannot be
exercised for real (no GPU here), and are checked on documents shaped as the child prints them."""
import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from agent.base import tools
from agent.probes import validate as v
from agent.probes.builtin import parent
from tests.probes.helpers import fake_tool, settings


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


def by_check(val):
    return {(f.check, f.entity): f for f in val.findings}


def test_runs_for_real_on_the_cpu(tmp_path):
    val = v.validate(settings(tmp_path), ["builtin"], force=True, node="n1")
    f = by_check(val)
    assert val.exit_code() == 0, [x.message for x in val.findings]
    sdc = f[("probe.builtin.sdc", "cpu")]
    assert sdc.status == "ok" and "bit for bit" in sdc.message
    mm = f[("probe.builtin.matmul_tflops", "cpu")]
    assert mm.severity == "info" and mm.value > 0 and mm.threshold is None  # the CPU has no floor
    assert f[("probe.builtin.copy_tbps", "cpu")].value > 0
    assert f[("probe.builtin.run", "n1")].status == "ok"


def test_injected_corruption_is_fatal_for_that_device(tmp_path):
    val = v.validate(settings(tmp_path), ["builtin"], force=True, node="n1", test_options={"corrupt_device": 0})
    sdc = by_check(val)[("probe.builtin.sdc", "cpu")]
    assert sdc.is_fatal and "silent data corruption" in sdc.message and sdc.value == 1
    assert val.exit_code() == 1


def test_an_interpreter_without_torch_is_not_available(tmp_path):
    s = settings(tmp_path, builtin={"path": "/usr/bin/python3"})  # Debian's python has no torch
    val = v.validate(s, force=True, node="n1", names=None)
    r = [x for x in val.results if x.name == "builtin"][0]
    assert r.status == "unavailable" and "torch cannot be imported" in r.absent


def test_a_child_that_hangs_is_unknown(tmp_path):
    py = fake_tool(tmp_path / "bin", "python", "exec sleep 1000")
    s = settings(tmp_path, builtin={"path": str(py), "quick_timeout_seconds": 1.0})
    val = v.validate(s, ["builtin"], force=True, node="n1")
    assert val.exit_code() == 2 and "did not finish" in val.findings[-1].message


def gpu_doc(**over):
    dev = {"index": 0, "name": "NVIDIA H200", "matmul_tflops": 780.0, "copy_tbps": 4.3,
           "sdc": {"mismatches": 0, "digest": "abc", "elements": 65536}}
    dev.update(over)
    return {"version": 1, "backend": "cuda", "torch": "2.11", "reference_digest": "abc", "devices": [dev]}


def test_an_h200_at_its_measured_speed_passes_its_floors():
    p = parent.parse(json.dumps(gpu_doc()), 0, "n1")
    f = {x.check: x for x in p.findings}
    assert f["probe.builtin.matmul_tflops"].status == "ok" and f["probe.builtin.matmul_tflops"].threshold == 593.4
    assert f["probe.builtin.copy_tbps"].status == "ok"


def test_a_slow_gpu_is_fatal_with_value_and_floor():
    p = parent.parse(json.dumps(gpu_doc(matmul_tflops=300.0)), 0, "n1")
    f = {x.check: x for x in p.findings}["probe.builtin.matmul_tflops"]
    assert f.is_fatal and f.value == 300.0 and f.threshold == 593.4 and "datasheet" in f.message


def test_configured_floor_overrides_the_table():
    p = parent.parse(json.dumps(gpu_doc(matmul_tflops=700.0)), 0, "n1", floors={"matmul_tflops": {"h200": 750}})
    assert {x.check: x for x in p.findings}["probe.builtin.matmul_tflops"].is_fatal


def test_a_digest_unlike_the_reference_is_corruption_even_with_no_counted_mismatch():
    p = parent.parse(json.dumps(gpu_doc(sdc={"mismatches": 0, "digest": "zzz", "elements": 65536})), 0, "n1")
    assert {x.check: x for x in p.findings}["probe.builtin.sdc"].is_fatal


def test_a_device_error_is_unknown_for_that_device():
    p = parent.parse(json.dumps(gpu_doc(error="OutOfMemoryError: CUDA out of memory")), 0, "n1")
    assert all(x.status == "unknown" for x in p.findings) and "out of memory" in p.findings[0].message


def test_impossible_values_are_unknown():
    p = parent.parse(json.dumps(gpu_doc(matmul_tflops=-1, copy_tbps=float("inf"))), 0, "n1")
    f = {x.check: x for x in p.findings}
    assert f["probe.builtin.matmul_tflops"].status == "unknown" and f["probe.builtin.copy_tbps"].status == "unknown"


@hsettings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
                        ["devices", "index", "name", "matmul_tflops", "copy_tbps", "sdc", "mismatches", "digest",
                         "error", "reference_digest", "backend"]), c, max_size=5), max_leaves=25),
       st.integers(-1, 10))
def test_parser_never_raises(doc, rc):
    parent.parse(json.dumps(doc), rc, "n1")
