"""The collector without a kernel: snapshots, no root, a probe that is down (counters kept), its metrics
through promtool, and the health rules."""
from __future__ import annotations

import subprocess

import pytest

from agent.base.collector import Context, Facts, NoData, Observation
from agent.sources.netflow.collector import NetflowCollector, NetflowReading, NetflowSettings
from agent.base.config import Expectations
from agent.sources.netflow import rules
from agent.base.metrics import render
from agent.sources.netflow.accounting import Ledger
from agent.sources.netflow.client import ProbeUnavailable
from agent.sources.netflow.decode import Totals
from agent.base.roots import Roots

from .test_accounting import live, reading, record


class FakeClient:
    def __init__(self, readings):
        self.readings = list(readings)
        self.info = {"notes": []}
        self.restarts = 0
        self.closed = False

    def read(self, timeout):
        item = self.readings.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self.closed = True


def collector(client=None, roots=None, **facts):
    ctx = Context(roots=roots or Roots(), node="n1", expect=Expectations(), facts=Facts(**facts))
    return NetflowCollector(NetflowSettings(), ctx, client=client)


def ok_reading(**kw):
    doc = reading(**kw)
    doc.update(mode="bpf", programs=2, maps={"records": [3, 16384], "agg": [1, 4096]}, live_read_seconds=0.004)
    return doc


def test_snapshot_replay_has_no_data(tmp_path):
    with pytest.raises(NoData):
        collector(roots=Roots.from_snapshot(tmp_path)).read()


def test_without_root_the_source_is_unavailable_not_failed(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    c = collector()
    r = c.read()
    assert r.state == "unavailable" and "root" in r.reason
    out = c.evaluate(r, None, None)
    f, = out.findings
    assert (f.check, f.status, f.severity) == ("netflow.probe", "unknown", "warning")
    assert out.metrics.value("vigil_netflow_probe_up") == 0
    assert c.client is None  # nothing was started


def test_a_probe_that_goes_down_keeps_the_counters(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    fake = FakeClient([ok_reading(sockets=[live(1, sent=500, received=20, segs=5)]),
                       ProbeUnavailable("probe exited (code -9); next start in 2s"),
                       ok_reading(epoch="e2", records=[record(1, 600, 20)])])
    c = collector(fake)
    r1 = c.read()
    out1 = c.evaluate(r1, None, None)
    assert out1.metrics.value("vigil_tcp_flow_sent_bytes_total", peer_class="pod_network") == 500
    assert {f.check for f in out1.findings} >= {"netflow.probe", "netflow.maps", "netflow.retransmits"}
    r2 = c.read()
    assert r2.state == "unavailable"
    out2 = c.evaluate(r2, Observation.now(r1), 10)
    assert [f.status for f in out2.findings] == ["unknown"]
    assert out2.metrics.value("vigil_tcp_flow_sent_bytes_total", peer_class="pod_network") == 500
    r3 = c.read()
    out3 = c.evaluate(r3, Observation.now(r2), 10)
    assert out3.metrics.value("vigil_tcp_flow_sent_bytes_total", peer_class="pod_network") == 600
    c.close()
    assert fake.closed


def test_degraded_mode_is_unknown():
    c = collector()
    f = c._probe_finding(NetflowReading("ok", mode="tracepoint", notes=("no cgroup v2 mount",)))
    assert f.status == "unknown" and "no cgroup v2 mount" in f.message


def test_metrics_pass_promtool(monkeypatch, promtool):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    stats = [[0] * 24, [4, 2, 1, 3, 1, 700, 4] + [0, 1, 3] + [0] * 14, [0] * 24]
    fake = FakeClient([ok_reading(sockets=[live(1, sent=5, rtt=90), live(2, cls=2, cgroup=11, received=7)],
                                  agg=[[1, 10, 100, 200, 1, 9]], stats=stats,
                                  counters={"records_lost": 2, "agg_overflow": 0})])
    c = collector(fake, pid_pods={})
    c.ledger = Ledger()
    r = c.read()
    out = c.evaluate(r, None, None)
    text = render(out.metrics)
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    body = text.decode()
    assert 'vigil_tcp_rtt_seconds_bucket{le="+Inf",peer_class="pod_network"} 5.0' in body
    assert 'vigil_tcp_connections_total{direction="egress",peer_class="pod_network"} 4.0' in body
    assert 'vigil_netflow_map_overflows_total{map="records"} 2.0' in body
    assert 'vigil_netflow_map_fill_ratio{map="records"}' in body


# -- rules --------------------------------------------------------------------------------------------------------
def snap(by_class=None, rtt=None):
    led = Ledger()
    s = led.snapshot()
    return s.__class__(**{**s.__dict__, "by_class": by_class or {}, "rtt": rtt or {}})


def test_retransmit_ratio_warns_above_threshold_with_enough_segments():
    t = rules.NetflowThresholds()
    before = snap({"storage": Totals(0, 0, 10, 1_000)})
    now = snap({"storage": Totals(10_000, 0, 110, 3_000)})
    f, = rules.class_checks(now, before, t)
    assert (f.check, f.status, f.severity, f.value) == ("netflow.retransmits", "unhealthy", "warning", 0.05)
    quiet = snap({"storage": Totals(10, 0, 50, 100)})
    f, = rules.class_checks(quiet, None, t)  # 50% of too few segments: not judged unhealthy
    assert f.status == "ok"


def test_rtt_judged_per_class_with_a_threshold():
    t = rules.NetflowThresholds()
    now = snap(rtt={"storage": ((0,) * 17, 300_000, 3), "node_internal": ((0,) * 17, 9_000_000, 3)})
    fs = rules.class_checks(now, None, t)
    assert [(f.check, f.entity, f.status) for f in fs] == [("netflow.rtt", "storage", "unhealthy")]
    assert fs[0].value == 0.1 and fs[0].threshold == 0.05  # node_internal has no threshold by default
    before = snap(rtt={"storage": ((0,) * 17, 290_000, 2)})
    f, = rules.class_checks(now, before, t)
    assert f.status == "ok" and f.value == 0.01  # the last cycle: one sample of 10 ms


def test_map_check_fires_only_when_overflow_grew():
    assert rules.map_check("n1", {"records_lost": 5}, {"records_lost": 5}).status == "ok"
    f = rules.map_check("n1", {"records_lost": 7, "agg_overflow": 0}, {"records_lost": 5})
    assert (f.status, f.value) == ("unhealthy", 2)
    assert rules.map_check("n1", {"records_lost": 1, "orphan_closes": 3}, None).status == "unhealthy"


def test_the_host_cgroup_root_is_found_under_the_sysfs_root(tmp_path):
    """In a pod (--sysfs /host/sys) the agent's own /proc/mounts shows its cgroup namespace, not the host's:
    sock_ops must attach to the host's cgroup v2 root, found under the mounted sysfs."""
    from agent.base.collector import Context
    from agent.sources.netflow.collector import NetflowCollector, NetflowSettings
    from agent.base.config import Expectations
    from agent.base.roots import Roots

    sysfs = tmp_path / "host" / "sys"
    (sysfs / "fs" / "cgroup" / "unified").mkdir(parents=True)
    (sysfs / "fs" / "cgroup" / "unified" / "cgroup.controllers").write_text("cpu memory\n")  # hybrid layout
    pod = NetflowCollector(NetflowSettings(), Context(Roots(sysfs, tmp_path / "proc"), "n", Expectations()))
    assert pod._host_cgroup() == str(sysfs / "fs" / "cgroup" / "unified")
    host = NetflowCollector(NetflowSettings(), Context(Roots(), "n", Expectations()))
    assert host._host_cgroup() is None


def test_agent_flows_lists_a_live_loopback_flow():
    """`agent --flows` (the debug view) shows a flow this test holds open, with its peer class and process."""
    import socket
    import subprocess

    from tests.support import AGENT

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        cli.sendall(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(conn.recv(65536))
        p = subprocess.run([AGENT, "--flows", "1000"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "PEER_CLASS" in p.stdout
        port = str(srv.getsockname()[1])
        rows = [line for line in p.stdout.splitlines() if port in line]
        assert rows, p.stdout
    finally:
        for s in (cli, conn, srv):
            s.close()
