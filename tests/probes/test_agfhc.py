"""AMD GPU Field Health Check: the parser on the outputs AMD publishes (a passing all_lvl1 run, a
`--recipe-info` run from AMD's acceptance guide) and on outputs constructed or derived from that format (a
failing test, a run cut mid-way, results.json files: fixtures/probes/README.md says which is which: no failing
AGFHC run and no complete results.json is published, AGFHC being under NDA), and fake `agfhc` binaries (real
executables that write results.json into the `-o` directory Vigil gave and replay a fixture, hang, flood, or
stop mid-run) through the real probe runner. No AGFHC can be installed here (REAL-PARTS.md)."""
import json

import pytest

from agent.base import tools
from agent.probes import agfhc
from agent.probes import validate as v
from agent.probes.settings import AgfhcSettings
from agent.base.config import ConfigError
from tests.probes.helpers import PROBE_FIXTURES, fake_tool, settings

D = PROBE_FIXTURES / "agfhc"
PASS = D / "agfhc-1.23.2-all_lvl1-pass-mi350x.txt"  # published
RECIPE_INFO = D / "agfhc-recipe-info-xgmi_lvl1-amd-docs.txt"  # published
FAIL = D / "constructed-all_lvl1-fail-hbm_bw.txt"  # constructed from the published format
CUT = D / "derived-all_lvl1-cut-mid-run.txt"  # the published run cut after its third test
RESULTS_PASS = D / "constructed-results-pass.json"
RESULTS_FAIL = D / "constructed-results-fail-hbm_bw.json"


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


def checks(findings):
    return {f.check: f for f in findings}


def results_at(tmp_path, src):
    d = tmp_path / "out"
    d.mkdir(exist_ok=True)
    (d / "results.json").write_text(src if isinstance(src, str) else src.read_text())
    return str(d / "results.json")


# -- the parser ----------------------------------------------------------------------------------------------
def test_published_passing_run_passes_every_test():
    p = agfhc.parse(PASS.read_text(), 0, "n1", None, "all_lvl1")
    assert p.problem is None
    f = checks(p.findings)
    assert sorted(f) == ["probe.agfhc.gfx_bf16ri", "probe.agfhc.gfx_fp16ri", "probe.agfhc.gfx_fp8ri",
                         "probe.agfhc.hbm_bw", "probe.agfhc.xgmi_a2a"]
    assert all(x.status == "ok" and x.entity == "n1" for x in f.values())


def test_recipe_info_ends_in_agfhc_success_and_is_still_no_validation():
    """AMD's guide shows `--recipe-info` printing `Tests: 0 Total, 0 Executed` and AGFHC_SUCCESS: a success
    line with no test run must not pass a node."""
    p = agfhc.parse(RECIPE_INFO.read_text(), 0, "n1")
    assert p.findings == [] and "no test ran" in p.problem


def test_constructed_failing_run_fails_the_test_it_names():
    """Constructed (fixtures/probes/README.md): the published run with hbm_bw's line saying FAIL."""
    p = agfhc.parse(FAIL.read_text(), 1, "n1", None, "all_lvl1")
    f = checks(p.findings)
    assert f["probe.agfhc.hbm_bw"].is_fatal and "hbm_bw FAILED" in f["probe.agfhc.hbm_bw"].message
    assert "[00:01:02/00:01:05]" in f["probe.agfhc.hbm_bw"].message  # what the line says beyond the name
    assert f["probe.agfhc.gfx_bf16ri"].status == "ok"


def test_what_a_fail_line_says_about_a_gpu_is_quoted_and_the_finding_stays_on_the_node():
    """Constructed: AGFHC's GPU numbering is its own, so a GPU named on the line is quoted, not mapped."""
    text = PASS.read_text().replace("PASS: hbm_bw-1-1                      [00:01:02/00:01:05]",
                                    "FAIL: hbm_bw-1-1 [00:01:02/00:01:05] GPU 3")
    p = agfhc.parse(text, 1, "n1")
    hbm = checks(p.findings)["probe.agfhc.hbm_bw"]
    assert hbm.is_fatal and hbm.entity == "n1" and "GPU 3" in hbm.message


def test_a_run_cut_mid_way_is_unknown_whatever_passed_before():
    p = agfhc.parse(CUT.read_text(), 0, "n1")
    assert "AGFHC_SUCCESS" in p.problem
    p = agfhc.parse(CUT.read_text(), 137, "n1")
    assert "exited 137" in p.problem and not any(f.is_fatal for f in p.findings)


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace("AGFHC_SUCCESS [0]", "AGFHC_FAILURE [1]"), "it said AGFHC_FAILURE [1]"),
    (lambda t: t.replace("Summary:", "ERROR: hbm_bw could not allocate memory\nSummary:"), "printed an error"),
    (lambda t: t.replace("Summary:", "ABORT: test aborted by the user\nSummary:"), "printed an error"),
    (lambda t: t.replace("5 Executed, 0 Skipped", "4 Executed, 1 Skipped"), "1 of 5 tests skipped"),
    (lambda t: t.replace("    PASS: xgmi_a2a-1-1                    [00:00:11/00:00:13]\n", ""),
     "5 tests executed and printed 4"),
    (lambda t: t.replace("FAIL", "x"), None),  # control: the published run as is
])
def test_anything_short_of_the_whole_pass_is_unknown(edit, why):
    """Derived from the published run, one thing changed each."""
    p = agfhc.parse(edit(PASS.read_text()), 0, "n1")
    if why is None:
        assert p.problem is None
    else:
        assert why in (p.problem or "") and not any(f.is_fatal for f in p.findings)


def test_a_non_zero_exit_without_a_fail_line_is_unknown():
    p = agfhc.parse(PASS.read_text(), 1, "n1")
    assert "exited 1 without naming a failed test" in p.problem


def test_results_json_agreeing_passes_and_total_failed_fails(tmp_path):
    """results.json files constructed from AMD's illustration (overall_result, tests) and the total_failed
    field AMD's harness reads."""
    p = agfhc.parse(PASS.read_text(), 0, "n1", results_at(tmp_path, RESULTS_PASS))
    assert p.problem is None
    p = agfhc.parse(PASS.read_text(), 0, "n1", results_at(tmp_path, RESULTS_FAIL))
    f = checks(p.findings)
    assert f["probe.agfhc.hbm_bw"].is_fatal and "results.json" in f["probe.agfhc.hbm_bw"].message
    # one verdict per test: the console's PASS for it is replaced, not left beside the failure
    assert [x.status for x in p.findings if x.check == "probe.agfhc.hbm_bw"] == ["unhealthy"]
    p = agfhc.parse(PASS.read_text(), 0, "n1", results_at(tmp_path, '{"total_failed": 2}'))
    assert checks(p.findings)["probe.agfhc"].is_fatal and "total_failed 2" in checks(p.findings)["probe.agfhc"].message


@pytest.mark.parametrize("doc, why", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"recipe": "all_lvl1"}', "none of total_failed"),
    ('{"total_failed": "0"}', "total_failed is '0'"),
    ('{"overall_result": "INCOMPLETE"}', "overall_result 'INCOMPLETE'"),
    ('{"tests": [{"name": "hbm_bw", "result": "SKIPPED"}]}', "test hbm_bw result SKIPPED"),
])
def test_results_json_that_proves_nothing_leaves_the_run_unknown(tmp_path, doc, why):
    p = agfhc.parse(PASS.read_text(), 0, "n1", results_at(tmp_path, doc))
    assert why in (p.problem or "") and not any(f.is_fatal for f in p.findings)


def test_parser_never_raises_on_noise():
    for text in ("", "\x00\xff" * 100, "PASS:\nFAIL: -1-1\n" * 1000, "Tests: x Total", "return code AGFHC_"):
        agfhc.parse(text, 0, "n1")


def test_recipes_are_checked_when_configured():
    AgfhcSettings(quick_recipe="hbm_lvl5:i=4").check("probes.agfhc")
    AgfhcSettings(full_recipe="/opt/amd/agfhc/recipes/mi350x/all_lvl1.yml").check("probes.agfhc")
    with pytest.raises(ConfigError, match="probes.agfhc.quick_recipe"):
        AgfhcSettings(quick_recipe="-t all; rm -rf /").check("probes.agfhc")


# -- fake agfhc binaries through the real runner -------------------------------------------------------------
# The fake reads its arguments as AGFHC's published command line has them (-r RECIPE -o DIR), records them,
# writes results.json into DIR when given one and replays a fixture with its log directory set to DIR.
def fake_agfhc(tmp_path, output, code=0, results=None, tail=""):
    args = tmp_path / "args"
    body = (f'echo "$@" > "{args}"\nout="$4"\n'
            + (f'cp "{results}" "$out/results.json"\n' if results else "")
            + f'sed "s#/home/mhilgema/agfhc/logs/agfhc_20250707-050239#$out#" "{output}"\n' + tail
            + f"\nexit {code}")
    return fake_tool(tmp_path / "bin", "agfhc", body), args


def validate_agfhc(tmp_path, path, timeout=60.0, level="quick", **kw):
    s = settings(tmp_path, agfhc={"path": str(path), "quick_timeout_seconds": timeout})
    s.max_output_bytes = kw.pop("max_output_bytes", s.max_output_bytes)
    return v.validate(s, ["agfhc"], level=level, node="n1", force=True, **kw)


def test_fake_agfhc_passing_runs_the_published_command_and_reads_its_results(tmp_path):
    path, args = fake_agfhc(tmp_path, PASS, results=RESULTS_PASS)
    val = validate_agfhc(tmp_path, path)
    assert val.exit_code() == 0, [f.message for f in val.findings if f.status != "ok"]
    out = tmp_path / "state" / "agfhc-quick"
    assert args.read_text().split() == ["-r", "all_lvl1", "-o", str(out)]
    assert checks(val.findings)["probe.agfhc.xgmi_a2a"].status == "ok"
    path, args = fake_agfhc(tmp_path, PASS, results=RESULTS_PASS)
    s = settings(tmp_path, agfhc={"path": str(path)})
    v.validate(s, ["agfhc"], level="full", node="n1", force=True)
    assert args.read_text().split()[:2] == ["-r", "all_lvl5"]


def test_fake_agfhc_failing(tmp_path):
    path, _ = fake_agfhc(tmp_path, FAIL, code=1, results=RESULTS_FAIL)
    val = validate_agfhc(tmp_path, path)
    assert val.exit_code() == 1
    hbm = checks(val.findings)["probe.agfhc.hbm_bw"]
    assert hbm.is_fatal and str(tmp_path / "state" / "agfhc-quick") in hbm.action  # where its logs are


def test_a_results_json_left_by_an_earlier_run_is_never_read(tmp_path):
    stale = tmp_path / "state" / "agfhc-quick"
    stale.mkdir(parents=True)
    (stale / "results.json").write_text(RESULTS_FAIL.read_text())
    path, _ = fake_agfhc(tmp_path, PASS)  # this run writes none
    assert validate_agfhc(tmp_path, path).exit_code() == 0


def test_fake_agfhc_that_hangs_is_killed_and_unknown(tmp_path):
    path, _ = fake_agfhc(tmp_path, PASS, tail="exec sleep 1000")
    val = validate_agfhc(tmp_path, path, timeout=1.5)
    assert val.exit_code() == 2 and not any(f.status == "ok" for f in val.findings)
    assert "did not finish in 1.5s" in checks(val.findings)["probe.agfhc.run"].message


def test_fake_agfhc_that_floods_is_cut_off_and_unknown(tmp_path):
    path = fake_tool(tmp_path / "bin", "agfhc", 'yes "    PASS: hbm_bw-1-1   [00:01:02/00:01:05]"')
    val = validate_agfhc(tmp_path, path, max_output_bytes=1 << 16)
    assert val.exit_code() == 2 and not any(f.status == "ok" for f in val.findings)


def test_fake_agfhc_exiting_non_zero_mid_run_is_unknown(tmp_path):
    path, _ = fake_agfhc(tmp_path, CUT, code=1)
    val = validate_agfhc(tmp_path, path)
    assert val.exit_code() == 2
    assert "did not finish" in checks(val.findings)["probe.agfhc.run"].message


def test_agfhc_on_path_by_its_usual_name(tmp_path, monkeypatch):
    path, _ = fake_agfhc(tmp_path, PASS)
    monkeypatch.setenv("PATH", f"{path.parent}:/usr/bin:/bin")
    val = v.validate(settings(tmp_path), ["agfhc"], node="n1", force=True)
    assert val.exit_code() == 0 and str(path) in val.results[0].command


def test_agfhc_needs_every_gpu_so_a_held_gpu_keeps_it_off(tmp_path):
    path, args = fake_agfhc(tmp_path, PASS)
    held = v.holdings_from([type("A", (), {"ref": type("R", (), {"namespace": "ml", "pod": "p"}),
                                           "resource": "amd.com/gpu", "source": "device-plugin",
                                           "match_text": ("0000:15:00.0",)})])
    val = v.validate(settings(tmp_path, agfhc={"path": str(path)}), ["agfhc"], node="n1", holdings=held)
    assert val.exit_code() == 2 and not args.exists()
    assert "agfhc needs every GPU of the node" in checks(val.findings)["probe.agfhc.run"].message


def test_the_aggregators_deadline_caps_agfhc_too():
    from agent.probes.settings import ProbeSettings
    from agent.stream.validation import capped
    s = capped(ProbeSettings(), 30)
    assert s.agfhc.quick_timeout_seconds == 30 and s.agfhc.full_timeout_seconds == 30
    assert json.dumps(ProbeSettings().agfhc.full_timeout_seconds) == "10800.0"
