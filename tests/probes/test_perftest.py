"""ib_write_bw parser on a published report (linux-rdma/perftest issue #273) and reports derived from it, and
the loopback through the runner with a fake ib_write_bw and a sysfs tree of one NDR port (no HCA can exist
here: REAL-PARTS.md)."""
from hypothesis import given, settings as hsettings, strategies as st

from agent.base import tools
from agent.probes import perftest
from agent.probes import validate as v
from tests.probes.helpers import PROBE_FIXTURES, replay, settings

P = PROBE_FIXTURES / "perftest"
NDR = "400 Gb/sec (4X NDR)"


def one(p):
    assert len(p.findings) == 1, p
    return p.findings[0]


def test_published_report_on_an_ndr_port_is_far_below_the_floor():
    f = one(perftest.parse((P / "write-bw-8b-issue273.txt").read_text(), 0, "mlx5_0/1", NDR))
    assert f.is_fatal and f.value == 0.48 and f.threshold == 340.0


def test_without_a_port_rate_the_value_is_reported_not_judged():
    f = one(perftest.parse((P / "write-bw-8b-issue273.txt").read_text(), 0, "mlx5_0/1", None))
    assert f.status == "ok" and f.severity == "info" and f.value == 0.48


def test_healthy_and_degraded_ports():
    assert one(perftest.parse((P / "write-bw-derived-1m-healthy.txt").read_text(), 0, "x/1", NDR)).status == "ok"
    assert one(perftest.parse((P / "write-bw-derived-1m-degraded.txt").read_text(), 0, "x/1", NDR)).is_fatal


def test_no_table_is_unknown():
    p = perftest.parse(" Couldn't connect to localhost:18515\nUnable to open file descriptor for socket\n", 1,
                       "mlx5_0/1", NDR, "Unable to open file descriptor for socket")
    assert p.problem and "no bandwidth" in p.problem and not p.findings


def sysfs(tmp_path, state="4: ACTIVE"):
    port = tmp_path / "sys" / "class" / "infiniband" / "mlx5_0" / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text(state + "\n")
    (port / "rate").write_text(NDR + "\n")
    return str(tmp_path / "sys")


def test_loopback_through_the_runner(tmp_path):
    args = tmp_path / "args"
    tool = replay(tmp_path / "bin", "ib_write_bw", P / "write-bw-derived-1m-degraded.txt", args_log=args)
    val = v.validate(settings(tmp_path, perftest={"path": str(tool)}), ["perftest"], force=True, node="n1",
                     sysfs=sysfs(tmp_path))
    tools.shutdown(refuse_new=False)
    f = {(x.check, x.entity): x for x in val.findings}
    assert f[(perftest.CHECK, "mlx5_0/1")].is_fatal and val.exit_code() == 1
    calls = args.read_text().splitlines()
    assert len(calls) == 2 and calls[1].endswith("localhost") and "-d mlx5_0 -i 1" in calls[0]


def test_a_port_that_is_down_is_not_tested(tmp_path):
    tool = replay(tmp_path / "bin", "ib_write_bw", P / "write-bw-derived-1m-healthy.txt")
    val = v.validate(settings(tmp_path, perftest={"path": str(tool)}), ["perftest"], force=True, node="n1",
                     sysfs=sysfs(tmp_path, "1: DOWN"))
    tools.shutdown(refuse_new=False)
    assert val.exit_code() == 2 and "no ACTIVE RDMA port" in val.findings[0].message


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from([
    " #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]",
    " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]",
    " 65536 1000 0.00 nan 0.1", " 65536 1000 0.00 -5 0.1", " 8 1 0 1e308 1"])), max_size=10),
    st.integers(-1, 5), st.one_of(st.none(), st.text(max_size=30), st.just(NDR)))
def test_parser_never_raises(lines, rc, rate):
    perftest.parse("\n".join(lines), rc, "x/1", rate)
