"""dcgmi diag -j parser on published outputs (fixtures/probes/README.md cites each) and hostile input."""
import json

from hypothesis import given, settings as hsettings, strategies as st

from agent.probes import dcgm
from tests.probes.helpers import PROBE_FIXTURES

D = PROBE_FIXTURES / "dcgm"


def by_entity(parsed):
    return {f.entity: f for f in parsed.findings}


def test_dcgm_3_pass_on_eight_gpus_with_a_line_before_the_json():
    p = dcgm.parse((D / "dcgm-3.1-pass-8gpu.txt").read_text(), 0, "n1")
    assert p.problem is None
    f = by_entity(p)
    assert sorted(f) == [f"gpu{i}" for i in range(8)]
    assert all(x.status == "ok" for x in f.values())
    assert "10 tests passed" in f["gpu3"].message  # 9 deployment tests for all GPUs + its own software test
    assert "DCGM 3.1.0" in p.summary


def test_dcgm_3_fail_is_fatal_and_names_the_test():
    p = dcgm.parse((D / "dcgm-3.x-fail-gcm.json").read_text(), 226, "n1")
    f = by_entity(p)["node"]  # this report names no GPU: the node as a whole failed
    assert f.is_fatal and "Persistence Mode" in f.message and "Environment Variables" in f.message
    assert p.problem is None  # a failed test explains the non-zero exit


def test_dcgm_3_warn_warns():
    p = dcgm.parse((D / "dcgm-3.x-warn-gcm.json").read_text(), 0, "n1")
    f = by_entity(p)["node"]
    assert f.status == "unhealthy" and f.severity == "warning" and "Persistence Mode" in f.message


def test_dcgm_3_every_test_skipped_is_unknown_not_a_pass():
    p = dcgm.parse((D / "dcgm-3.x-skip-r3.json").read_text(), 0, "n1")
    f = by_entity(p)["gpu0"]
    assert f.status == "unknown" and "skipped every test" in f.message


def test_dcgm_4_fail_on_one_gpu_names_that_gpu_and_dcgms_reason():
    p = dcgm.parse((D / "dcgm-4.x-fail-temperature.json").read_text(), 226, "n1")
    f = by_entity(p)
    assert f["gpu0"].is_fatal and "memory" in f["gpu0"].message and "Temperature 95" in f["gpu0"].message
    assert f["gpu1"].status == "ok"
    assert "DCGM 4.6.0" in p.summary


def test_runtime_error_is_unknown():
    text = json.dumps({"DCGM Diagnostic": {"runtime_error": "Couldn't connect to nv-hostengine"}})
    p = dcgm.parse(text, 1, "n1")
    assert p.problem and "nv-hostengine" in p.problem


def test_truncated_report_is_unknown_and_keeps_nothing():
    text = (D / "dcgm-4.x-fail-temperature.json").read_text()
    p = dcgm.parse(text[: len(text) // 2], 0, "n1")
    assert p.problem and "incomplete" in p.problem and not p.findings


def test_non_zero_exit_without_a_failed_test_is_not_a_pass():
    p = dcgm.parse((D / "dcgm-3.1-pass-8gpu.txt").read_text(), 205, "n1", "Error: something")
    assert p.problem and "exited 205" in p.problem


def test_unreadable_results_cost_themselves_and_make_the_run_unknown():
    doc = {"DCGM Diagnostic": {"test_categories": [{"category": "x", "tests": [
        {"name": "a", "results": [{"entity_group": "GPU", "entity_id": 0, "status": "Pass"},
                                  {"entity_group": "GPU", "entity_id": -4, "status": "Pass"},
                                  {"entity_group": "GPU", "entity_id": 1, "status": "Maybe"}]}]}]}}
    p = dcgm.parse(json.dumps(doc), 0, "n1")
    assert by_entity(p)["gpu0"].status == "ok" and p.problem and "2 dcgmi result(s) unreadable" in p.problem


def test_deeply_nested_json_is_refused():
    p = dcgm.parse("[" * 100_000, 0, "n1")
    assert p.problem


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                               ["DCGM Diagnostic", "DCGM GPU Diagnostic", "test_categories", "tests", "results",
                                "status", "gpu_ids", "gpu_id", "entity_group", "entity_id", "warnings", "name",
                                "runtime_error", "metadata", "version"]), c, max_size=5), max_leaves=30)


@hsettings(max_examples=300, deadline=None)
@given(json_values, st.integers(-1, 300))
def test_parser_never_raises(doc, rc):
    p = dcgm.parse(json.dumps(doc), rc, "n1")
    assert p.findings or p.problem


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_raises_on_text(text):
    dcgm.parse(text, 0, "n1")
