"""AMD ROCm Validation Suite: the parser on AMD's published sample outputs and on outputs constructed from rvs's
format strings (fixtures/probes/README.md says which is which), and fake `rvs` binaries (real executables that
read the conf Vigil wrote and replay a fixture, hang, flood, or stop mid-run) through the real probe runner.
No ROCm can be installed here (REAL-PARTS.md): the KFD topology in sysfs is a temp tree, as on an MI300X node."""
import re
from types import SimpleNamespace

import pytest

from agent.base import tools
from agent.probes import rvs
from agent.probes import validate as v
from agent.probes.floors import floor_for
from agent.probes.runner import ProbeContext
from tests.containers.helpers import PodResources
from tests.probes.helpers import PROBE_FIXTURES, fake_tool, settings

D = PROBE_FIXTURES / "rvs"
MI300X = "AMD Instinct MI300X"
# The two GPUs of the constructed fixtures: KFD gpu_id, PCI address, KFD node
GPUS = [(40123, "0000:05:00.0", 2), (51234, "0000:15:00.0", 3)]


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


def by(findings, check=None):
    return {f.entity: f for f in findings if check is None or f.check == check}


def kfd_tree(tmp_path, gpus=GPUS):
    """/sys/class/kfd/kfd/topology/nodes as the amdgpu driver lays it out: node 0 a CPU (gpu_id 0), then one
    node per GPU with its gpu_id and, in properties, `domain` and `location_id` (bus << 8 | devfn)."""
    nodes = tmp_path / "sys" / "class" / "kfd" / "kfd" / "topology" / "nodes"
    (nodes / "0").mkdir(parents=True)
    (nodes / "0" / "gpu_id").write_text("0\n")
    (nodes / "0" / "properties").write_text("cpu_cores_count 96\nsimd_count 0\nlocation_id 0\ndomain 0\n")
    for gid, bdf, n in gpus:
        d = nodes / str(n)
        d.mkdir()
        bus, devfn = int(bdf[5:7], 16), int(bdf[8:10], 16) << 3 | int(bdf[11])
        (d / "gpu_id").write_text(f"{gid}\n")
        (d / "properties").write_text(f"cpu_cores_count 0\nsimd_count 1216\nlocation_id {bus << 8 | devfn}\n"
                                      f"domain {int(bdf[:4], 16)}\n")
    return str(tmp_path / "sys")


def amd_facts():
    return SimpleNamespace(gpus=[SimpleNamespace(index=i, vendor="amd", uuid="", pci_bus_id=bdf, partition="",
                                                 model=MI300X) for i, (_, bdf, _) in enumerate(GPUS)])


def quick_actions():
    return [rvs.Action("vigil-gst-bf16", "gst", floor_for("matmul_tflops", MI300X)),
            rvs.Action("vigil-babel-float", "babel", floor_for("copy_tbps", MI300X)),
            rvs.Action("vigil-pebb-h2d", "pebb", floor_for("pcie_gbps", MI300X), kind="pebb_h2d"),
            rvs.Action("vigil-pebb-d2h", "pebb", floor_for("pcie_gbps", MI300X), kind="pebb_d2h")]


# -- the parser on AMD's published samples (docs/ug1main.md, rvs 1.6.75 on 8 x MI355X) ----------------------
def test_published_gst_sample_measures_every_gpu_it_shows():
    p = rvs.parse((D / "rvs-1.6.75-gst-pass-mi355x.txt").read_text(), 0, "n1",
                  [rvs.Action("gst-Tflops-2K2K2K-trig-fp4", "gst")])
    assert p.problem is None
    f = by(p.findings)
    # AMD's sample is abridged ("..."): four GPUs printed their verdict
    assert sorted(f) == ["kfd-gpu-11806", "kfd-gpu-27226", "kfd-gpu-42583", "kfd-gpu-57875"]
    assert f["kfd-gpu-42583"].value == pytest.approx(1063.56) and f["kfd-gpu-42583"].status == "ok"
    assert "no floor" in f["kfd-gpu-42583"].message  # MI355X is not in Vigil's table: measured, not judged


def test_published_sample_maps_gpus_through_the_addresses_rvs_prints():
    # rvs's summary table and pebb lines carry "index - node - bdf": the node's GPU at that address
    p = rvs.parse((D / "rvs-1.6.75-pebb-pass-mi355x.txt").read_text(), 0, "n1",
                  [rvs.Action("pcie_h2d_bandwidth", "pebb")], by_bus={"0000:05:00.0": "gpu0", "0000:f5:00.0": "gpu7"})
    f = by(p.findings)
    assert f["gpu0"].value == pytest.approx(57.678) and f["gpu7"].value == pytest.approx(57.710)
    assert "kfd-gpu-42583" not in f


def test_published_iet_sample_passes_every_gpu_with_its_peak_power():
    p = rvs.parse((D / "rvs-1.6.75-iet-pass-mi355x.txt").read_text(), 0, "n1",
                  [rvs.Action("iet-stress-1400W-true", "iet", target=1400)])
    f = by(p.findings)
    assert len(f) == 8 and all(x.status == "ok" for x in f.values())
    assert f["kfd-gpu-1590"].value == 1401 and f["kfd-gpu-1590"].threshold == 1400


def test_published_babel_and_pbqt_samples():
    p = rvs.parse((D / "rvs-1.6.75-babel-pass-mi355x.txt").read_text(), 0, "n1",
                  [rvs.Action("babel-double-825MiB", "babel", floor_for("copy_tbps", MI300X))])
    [f] = p.findings
    assert f.entity == "kfd-gpu-42583" and f.value == pytest.approx(6.224) and f.status == "ok"  # Copy, TB/s
    p = rvs.parse((D / "rvs-1.6.75-pbqt-pass-mi355x.txt").read_text(), 0, "n1",
                  [rvs.Action("xgmi_d2d_unidir_bandwidth", "pbqt", floor_for("xgmi_p2p_gbps", MI300X))])
    f = by(p.findings)
    # GPU 57875's slowest peer in the sample is 36479 at 59.704 GB/s
    assert f["kfd-gpu-57875"].value == pytest.approx(59.704) and "kfd-gpu-36479" in f["kfd-gpu-57875"].message


def test_published_errors_leave_the_run_unknown_never_failed_or_passed():
    # ROCm/ROCmValidationSuite#1131: a key missing from the conf; #1263: no supported GPU
    p = rvs.parse((D / "issue1131-gst-missing-key.txt").read_text(), 0, "n1", [rvs.Action("gpustress", "gst")])
    assert not p.findings and "key 'target_stress' was not found" in p.problem
    p = rvs.parse((D / "issue1263-no-platform.txt").read_text(), 0, "n1", [rvs.Action("gpustress", "gst")])
    assert not p.findings and "No platform support" in p.problem


# -- constructed MI300X outputs, judged against Vigil's floors ----------------------------------------------
def test_constructed_quick_pass_judges_every_module_against_the_floors():
    p = rvs.parse((D / "constructed-quick-pass-mi300x.txt").read_text(), 0, "n1", quick_actions(),
                  {40123: "gpu0", 51234: "gpu1"}, 2)
    assert p.problem is None
    assert {(f.check, f.entity) for f in p.findings} == {
        (c, g) for c in ("probe.rvs.gst", "probe.rvs.babel", "probe.rvs.pebb_h2d", "probe.rvs.pebb_d2h")
        for g in ("gpu0", "gpu1")}
    gst = by(p.findings, "probe.rvs.gst")["gpu0"]
    assert gst.status == "ok" and gst.value == pytest.approx(561.34) and gst.threshold == pytest.approx(457.59)


def test_constructed_failure_fails_the_gpu_that_missed_its_target_and_only_it():
    p = rvs.parse((D / "constructed-quick-fail-mi300x.txt").read_text(), 0, "n1", quick_actions(),
                  {40123: "gpu0", 51234: "gpu1"}, 2)
    assert p.problem is None  # rvs's "Action failed to run successfully." restates the FAIL: not an error
    gst = by(p.findings, "probe.rvs.gst")
    assert gst["gpu1"].is_fatal and gst["gpu1"].value == pytest.approx(301.877) and "target not met" in gst["gpu1"].message
    assert gst["gpu0"].status == "ok"


def test_a_summary_fail_without_a_per_gpu_reason_fails_the_node():
    text = (D / "constructed-quick-pass-mi300x.txt").read_text().replace(
        "| vigil-babel-float                | BABEL          | \x1b[32mPASS", "| vigil-babel-float                | BABEL          | \x1b[31mFAIL")
    p = rvs.parse(text, 0, "n1", quick_actions(), {40123: "gpu0", 51234: "gpu1"}, 2)
    assert by(p.findings, "probe.rvs.babel")["n1"].is_fatal


def test_a_gpu_missing_from_the_output_is_unknown():
    text = "\n".join(line for line in (D / "constructed-quick-pass-mi300x.txt").read_text().splitlines()
                     if "51234] GFLOPS" not in line)
    p = rvs.parse(text, 0, "n1", quick_actions(), {40123: "gpu0", 51234: "gpu1"}, 2)
    assert p.problem and "vigil-gst-bf16: results for 1 of 2 GPUs" in p.problem


def test_a_measurement_under_the_floor_fails_even_when_rvs_says_met():
    text = (D / "constructed-quick-pass-mi300x.txt").read_text().replace("GFLOPS 561340 Target GFLOPS: 457590 met: TRUE",
                                                                          "GFLOPS 401000 Target GFLOPS: 0 met: TRUE")
    p = rvs.parse(text, 0, "n1", quick_actions(), {40123: "gpu0", 51234: "gpu1"}, 2)
    assert by(p.findings, "probe.rvs.gst")["gpu0"].is_fatal


@pytest.mark.parametrize("cut", [i / 40 for i in range(1, 40)])
def test_an_output_cut_anywhere_is_never_a_pass(cut):
    text = (D / "constructed-quick-pass-mi300x.txt").read_text()
    cut_text = text[: int(len(text) * cut)]
    ids = {40123: "gpu0", 51234: "gpu1"}
    # stopped (a crash, a kill): rvs's exit status is not 0
    assert rvs.parse(cut_text, 1, "n1", quick_actions(), ids, 2).problem
    p = rvs.parse(cut_text, 0, "n1", quick_actions(), ids, 2)
    if "RVS) Summary" in cut_text:  # rvs 1.4+ (ROCm 7.1): its summary table must be whole
        assert p.problem
    else:  # read as an rvs before 1.4 (no summary): complete only with every action's result for every GPU
        assert p.problem or {(f.check, f.entity) for f in p.findings} == {
            (a.check, g) for a in quick_actions() for g in ("gpu0", "gpu1")}


def test_parser_never_raises_on_noise():
    for text in ("", "|", "| a - 1 | b - 2 |\n| x |", "[RESULT] [1.0] [vigil-gst-bf16] [GPU:: 9999999999999] GFLOPS 1 "
                 "Target GFLOPS: 1 met: TRUE", "\x00" * 100, "RVS-ERROR", "42583 Copy 1e400 1 1 1"):
        rvs.parse(text, 0, "n1", quick_actions())


# -- the conf Vigil writes ----------------------------------------------------------------------------------
def test_the_conf_names_every_module_with_the_floor_as_gst_target(tmp_path):
    s = settings(tmp_path)
    ctx = ProbeContext("n1", s, "full", gpu_names={0: MI300X, 1: MI300X})
    actions, skipped = rvs.plan(ctx)
    text = rvs.conf_text(actions, "all")
    assert [a.module for a in actions] == ["gst", "babel", "pebb", "pebb", "pbqt", "iet"] and not skipped
    assert "target_stress: 457590" in text and "data_type: bf16_r" in text
    assert "target_power: 750" in text  # AMD's MI300X iet_stress.conf
    assert "peers: all" in text
    # an unknown model: gst measured (target 0), iet left out and said why
    actions, skipped = rvs.plan(ProbeContext("n1", s, "full", gpu_names={0: "AMD Instinct MI210"}))
    assert "iet" not in [a.module for a in actions] and "no power target" in skipped[0]


# -- fake rvs binaries through the real runner ---------------------------------------------------------------
def fake_rvs(tmp_path, body):
    """An `rvs` that insists on `-c <conf>` naming Vigil's actions, then runs `body` ($CONF is the conf)."""
    return fake_tool(tmp_path / "bin", "rvs", 'test "$1" = -c || { echo "RVS-ERROR [CLI] usage"; exit 255; }\n'
                     'CONF="$2"\ngrep -q "name: vigil-gst-bf16" "$CONF" || exit 254\n'
                     f'cp "$CONF" "{tmp_path}/seen.conf"\n{body}')


def validate_rvs(tmp_path, body, timeout=60.0, **kw):
    path = fake_rvs(tmp_path, body)
    s = settings(tmp_path, rvs={"path": str(path), "quick_timeout_seconds": timeout})
    s.max_output_bytes = kw.pop("max_output_bytes", s.max_output_bytes)
    return v.validate(s, ["rvs"], node="n1", force=True, facts=amd_facts(), sysfs=kfd_tree(tmp_path), **kw)


def test_fake_rvs_passing(tmp_path):
    val = validate_rvs(tmp_path, f'cat "{D / "constructed-quick-pass-mi300x.txt"}"')
    assert val.exit_code() == 0, [f.message for f in val.findings if f.status != "ok"]
    conf = (tmp_path / "seen.conf").read_text()
    assert conf.count("device: all") == 4 and "module: babel" in conf and "module: pebb" in conf
    assert by(val.findings, "probe.rvs.gst")["gpu1"].status == "ok"  # KFD gpu_id 51234 -> 0000:15:00.0 -> gpu1


def test_fake_rvs_replaying_amds_published_gst_output(tmp_path):
    # AMD's sample with its action renamed to the one in Vigil's conf; only gst asked for
    sample = D / "rvs-1.6.75-gst-pass-mi355x.txt"
    path = fake_rvs(tmp_path, f'sed "s/gst-Tflops-2K2K2K-trig-fp4/vigil-gst-bf16/g" "{sample}"')
    s = settings(tmp_path, rvs={"path": str(path), "quick_modules": ["gst"]})
    val = v.validate(s, ["rvs"], node="n1", force=True)
    assert val.exit_code() == 0
    assert len(by(val.findings, "probe.rvs.gst")) == 4


def test_fake_rvs_failing(tmp_path):
    val = validate_rvs(tmp_path, f'cat "{D / "constructed-quick-fail-mi300x.txt"}"')
    assert val.exit_code() == 1
    assert by(val.findings, "probe.rvs.gst")["gpu1"].is_fatal


def test_fake_rvs_that_hangs_is_killed_and_unknown(tmp_path):
    val = validate_rvs(tmp_path, f'cat "{D / "constructed-quick-pass-mi300x.txt"}"\nexec sleep 1000', timeout=1.5)
    assert val.exit_code() == 2 and not any(f.status == "ok" for f in val.findings)
    assert "did not finish in 1.5s" in by(val.findings, "probe.rvs.run")["n1"].message


def test_fake_rvs_that_floods_is_cut_off_and_unknown(tmp_path):
    val = validate_rvs(tmp_path, 'yes "[RESULT] [1.0] [vigil-gst-bf16] [GPU:: 40123] GFLOPS 1"', max_output_bytes=1 << 16)
    assert val.exit_code() == 2 and not any(f.status == "ok" for f in val.findings)


def test_fake_rvs_exiting_non_zero_mid_run_is_unknown(tmp_path):
    val = validate_rvs(tmp_path, f'head -n 60 "{D / "constructed-quick-pass-mi300x.txt"}"\nexit 1')
    assert val.exit_code() == 2
    assert "stopped before it finished" in by(val.findings, "probe.rvs.run")["n1"].message


# -- free GPUs only ------------------------------------------------------------------------------------------
def test_a_gpu_held_by_a_pod_is_left_out_of_the_conf_and_reported_untested(tmp_path):
    """The kubelet's PodResources on a real unix socket (the fake server of tests/containers): AMD's device
    plugin reports the GPU's PCI address."""
    server = PodResources(str(tmp_path / "kubelet.sock"))
    try:
        server.set({("ml", "train-0"): {"main": [("amd.com/gpu", ["0000:15:00.0"])]}})
        path = fake_rvs(tmp_path, f'cat "{D / "constructed-quick-pass-mi300x.txt"}"')
        s = settings(tmp_path, rvs={"path": str(path)})
        s.podresources_socket = server.socket
        val = v.validate(s, ["rvs"], node="n1", facts=amd_facts(), sysfs=kfd_tree(tmp_path))
    finally:
        server.stop()
    conf = (tmp_path / "seen.conf").read_text()
    assert re.findall(r"^  device: (.*)$", conf, re.M) == ["40123"] * 4  # gpu0's KFD gpu_id only
    assert by(val.findings, "probe.rvs.gst")["gpu0"].status == "ok"
    held = by(val.findings, "probe.rvs")["gpu1"]
    assert held.status == "unknown" and "held by ml/train-0" in held.message
    assert not any(f.entity == "gpu1" and f.status == "ok" for f in val.findings)
    assert val.exit_code() == 2


def test_free_gpus_without_a_kfd_topology_refuse_rather_than_test_everything(tmp_path):
    path = fake_rvs(tmp_path, f'cat "{D / "constructed-quick-pass-mi300x.txt"}"')
    s = settings(tmp_path, rvs={"path": str(path)})
    held = v.holdings_from([SimpleNamespace(ref=SimpleNamespace(namespace="ml", pod="p"), resource="amd.com/gpu",
                                            source="device-plugin", match_text=("0000:15:00.0",))])
    val = v.validate(s, ["rvs"], node="n1", facts=amd_facts(), holdings=held, sysfs=str(tmp_path / "empty"))
    assert val.exit_code() == 2 and not (tmp_path / "seen.conf").exists()
    assert "KFD gpu_ids are unknown" in by(val.findings, "probe.rvs.run")["n1"].message


def test_the_aggregators_deadline_caps_rvs_too():
    """A request's timeout_seconds caps every probe's deadline, rvs's 15-minute one included."""
    from agent.probes.settings import ProbeSettings
    from agent.stream.validation import capped
    s = capped(ProbeSettings(), 30)
    assert s.rvs.quick_timeout_seconds == 30 and s.rvs.full_timeout_seconds == 30
    assert ProbeSettings().rvs.quick_timeout_seconds == 900  # the original is untouched
