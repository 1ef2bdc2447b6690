"""all_reduce_perf parser on a published nccl-tests run (fixtures/probes/README.md), the cases derived from it,
and hostile input; and through the runner with a fake all_reduce_perf binary."""
from hypothesis import given, settings as hsettings, strategies as st

from agent.base import tools
from agent.probes import nccl
from agent.probes import validate as v
from tests.probes.helpers import PROBE_FIXTURES, replay, settings

N = PROBE_FIXTURES / "nccl"


def by(p):
    return {(f.check, f.entity): f for f in p.findings}


def test_published_run_reports_large_sizes_and_correctness():
    p = nccl.parse((N / "allreduce-h100-16gpu-pass.txt").read_text(), 0, "n1")
    f = by(p)
    assert p.problem is None
    # 16 ranks over two nodes: the 8-GPU floor does not apply, the values are reported
    big = f[(nccl.CHECK, "8GiB")]
    assert big.severity == "info" and big.value == 337.35 and big.threshold is None
    assert sorted(e for c, e in f if c == nccl.CHECK) == ["1GiB", "2GiB", "4GiB", "8GiB"]
    assert f[("probe.nccl.correctness", "n1")].status == "ok"
    assert "avg bus bandwidth 70.742" in p.summary


def eight(text):
    """The same table as eight ranks of one node (ranks 8-15 dropped), so the H100 floor applies."""
    return "\n".join(ln for ln in text.splitlines() if "ztan-mig-gq73" not in ln)


def test_eight_h100s_are_judged_against_the_floor():
    p = nccl.parse(eight((N / "allreduce-h100-16gpu-pass.txt").read_text()), 0, "n1")
    f = by(p)
    assert f[(nccl.CHECK, "1GiB")].status == "unhealthy" and f[(nccl.CHECK, "1GiB")].threshold == 300.0
    assert f[(nccl.CHECK, "8GiB")].status == "ok" and f[(nccl.CHECK, "8GiB")].value == 337.35


def test_wrong_values_are_fatal():
    p = nccl.parse((N / "allreduce-h100-derived-wrong.txt").read_text(), 0, "n1")
    c = by(p)[("probe.nccl.correctness", "n1")]
    assert c.is_fatal and c.value == 3


def test_a_run_cut_mid_table_is_unknown():
    p = nccl.parse((N / "allreduce-h100-derived-truncated.txt").read_text(), 134, "n1", "Aborted")
    assert p.problem and "stopped mid-run" in p.problem


def test_through_the_runner(tmp_path):
    tool = replay(tmp_path / "bin", "all_reduce_perf", N / "allreduce-h100-derived-wrong.txt")
    s = settings(tmp_path, nccl={"path": str(tool)})
    gpus = type("F", (), {"gpus": [type("G", (), {"index": i, "model": "NVIDIA H100 80GB HBM3", "partition": ""})()
                                   for i in range(8)]})()
    val = v.validate(s, ["nccl"], force=True, node="n1", facts=gpus)
    tools.shutdown(refuse_new=False)
    assert val.exit_code() == 1
    assert "-g 8" in val.results[0].command


def test_no_gpu_means_not_run(tmp_path):
    tool = replay(tmp_path / "bin", "all_reduce_perf", N / "allreduce-h100-16gpu-pass.txt")
    (tmp_path / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    val = v.validate(settings(tmp_path, nccl={"path": str(tool)}), ["nccl"], force=True, node="n1",
                     sysfs=str(tmp_path / "sys"))
    assert val.exit_code() == 2 and "no GPU found" in val.findings[0].message


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=60), st.sampled_from([
    "  1073741824  268435456  float  sum  -1  6759.0  158.86  297.86  0  6737.4  159.37  298.82  N/A",
    "# Out of bounds values : 0 OK", "# Avg bus bandwidth    : nan", "  1 1 float sum -1 x y z 0 1 2 3 0",
    "#  Rank  0 Group  0 Pid 1 on h device  0 [0x07] NVIDIA H200"])), max_size=20), st.integers(-1, 200))
def test_parser_never_raises(lines, rc):
    nccl.parse("\n".join(lines), rc, "n1")
