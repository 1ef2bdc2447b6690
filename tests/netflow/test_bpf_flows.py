"""Real eBPF on this kernel: TCP connections with known byte counts, and the exported counters to the byte.

One probe serves the session (conftest.netflow). Every test uses peer classes of its own (127.77.N.x, the
namespace pair's addresses, a port of interest), so the deltas it asserts hold whatever else this machine's
loopback carries meanwhile. Payload bytes exclude the SYN and FINs (bpf/tcpflow.c, decode.live_payload).
"""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from agent.sources.netflow.decode import RTT_BOUNDS_US

from .helpers import (
    HOST4,
    HOST6,
    POD4,
    POD6,
    REPO,
    CgroupClient,
    Scrape,
    connect,
    conns,
    delta,
    exchange,
    flow,
    listener,
)

pytestmark = pytest.mark.root


def test_probe_runs_in_its_own_process(netflow):
    s = Scrape(netflow)
    assert s.reading.state == "ok", s.reading.reason
    assert s.reading.mode == "bpf"
    assert s.total("vigil_netflow_programs_loaded") == 1  # sock_ops; the tracepoint only where it cannot run
    assert s.total("vigil_netflow_probe_up") == 1
    assert s.finding("netflow.probe", "test-node").status == "ok"
    assert netflow.client.pid not in (None, __import__("os").getpid())
    assert "bcc" not in sys.modules  # BCC (74 MB and up) never loads in the agent


def test_short_lived_connections_ipv4_both_directions(netflow):
    srv = listener("127.77.1.1")
    before = Scrape(netflow)
    sizes = [(1000, 333), (0, 5), (70_000, 1), (12_345, 250_000), (1, 0)]
    for i, (up, down) in enumerate(sizes):
        exchange(srv, up, down, src="127.77.1.2", first="client" if i % 2 else "server")
    # A connect that fails: nothing listens on the port any more.
    port = srv.getsockname()[1]
    srv.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.77.1.1", port), timeout=2)
    after = Scrape(netflow)
    up, down = sum(u for u, _ in sizes), sum(d for _, d in sizes)
    assert flow(after, before, "t1_srv") == (up, down)  # the clients' sockets: their peer is the server
    assert flow(after, before, "t1_cli") == (down, up)  # the server's sockets
    assert conns(after, before, "egress", "t1_srv") == len(sizes)
    assert conns(after, before, "ingress", "t1_cli") == len(sizes)
    assert conns(after, before, "ingress", "t1_srv") == 0 and conns(after, before, "egress", "t1_cli") == 0
    assert delta(after, before, "vigil_tcp_connections_closed_total", direction="egress", peer_class="t1_srv") == 5
    assert delta(after, before, "vigil_tcp_connect_failures_total", peer_class="t1_srv") == 1
    # Each closed connection is one RTT observation; the histogram is cumulative and consistent.
    assert delta(after, before, "vigil_tcp_rtt_seconds_count", peer_class="t1_srv") == len(sizes)
    assert after.total("vigil_tcp_rtt_seconds_sum", peer_class="t1_srv") > 0
    les = [after.total("vigil_tcp_rtt_seconds_bucket", peer_class="t1_srv", le=repr(b / 1e6)) for b in RTT_BOUNDS_US]
    assert les == sorted(les)
    assert after.total("vigil_tcp_rtt_seconds_bucket", peer_class="t1_srv", le="+Inf") == \
        after.total("vigil_tcp_rtt_seconds_count", peer_class="t1_srv")
    assert delta(after, before, "vigil_tcp_sent_segments_total", peer_class="t1_srv") >= len(sizes)
    assert delta(after, before, "vigil_tcp_retransmits_total", peer_class="t1_srv") >= 0


@pytest.mark.parametrize("first", ["client", "server"])
def test_long_lived_connection_read_live_then_closed_counts_each_byte_once(netflow, first):
    srv = listener("127.77.2.1")
    start = Scrape(netflow)
    c = connect(srv, src="127.77.2.2")
    c.up(100_000)
    c.down(3_000)
    live = Scrape(netflow, start.observation)
    assert flow(live, start, "t2_srv") == (100_000, 3_000)  # read live through inet_diag
    assert flow(live, start, "t2_cli") == (3_000, 100_000)
    assert conns(live, start, "egress", "t2_srv") == 1
    c.up(7)
    c.down(200_000)
    live2 = Scrape(netflow, live.observation)
    assert flow(live2, start, "t2_srv") == (100_007, 203_000)
    c.up(50)
    c.close(first)
    closed = Scrape(netflow, live2.observation)
    assert flow(closed, start, "t2_srv") == (100_057, 203_000)  # final - already counted, at close
    assert flow(closed, start, "t2_cli") == (203_000, 100_057)
    again = Scrape(netflow, closed.observation)
    assert flow(again, start, "t2_srv") == (100_057, 203_000)  # and nothing more later
    assert delta(again, start, "vigil_tcp_connections_closed_total", direction="ingress", peer_class="t2_cli") == 1
    srv.close()


def test_ipv6_loopback(netflow, v6_port):
    srv = listener("::1", v6_port)
    before = Scrape(netflow)
    exchange(srv, 4_321, 1_234)
    c = connect(srv)
    c.up(10)
    mid = Scrape(netflow)
    c.down(20)
    c.close()
    after = Scrape(netflow)
    srv.close()
    # A port of interest classifies both ends (the client's remote port, the server's local port).
    assert flow(mid, before, "t6") == (4_321 + 1_234 + 10, 4_321 + 1_234 + 10)
    assert flow(after, before, "t6") == (5_585, 5_585)
    assert conns(after, before, "egress", "t6") == 2 and conns(after, before, "ingress", "t6") == 2


@pytest.mark.parametrize("v", [4, 6])
def test_across_a_network_namespace_pair(netflow, testnet, v):
    """A "pod" in its own network namespace: the host's sockets see a pod_network peer, the pod's sockets (read
    through inet_diag inside that namespace while live) see a t_host peer."""
    host, pod = (HOST4, POD4) if v == 4 else (HOST6, POD6)
    in_pod = listener(pod, netns=testnet)
    on_host = listener(host)
    before = Scrape(netflow)
    exchange(in_pod, 3_000, 40_000, src=host)  # host -> pod, short-lived
    c = connect(on_host, src=pod, netns=testnet)  # pod -> host, long-lived
    c.up(11_111)
    c.down(222)
    mid = Scrape(netflow, before.observation)
    assert flow(mid, before, "t_host") == (40_000 + 11_111, 3_000 + 222)
    c.down(1)
    c.close("server")
    after = Scrape(netflow, mid.observation)
    assert flow(after, before, "pod_network") == (3_000 + 223, 40_000 + 11_111)
    assert flow(after, before, "t_host") == (40_000 + 11_111, 3_000 + 223)
    assert conns(after, before, "egress", "pod_network") == 1 and conns(after, before, "ingress", "t_host") == 1
    assert conns(after, before, "egress", "t_host") == 1 and conns(after, before, "ingress", "pod_network") == 1
    in_pod.close()
    on_host.close()


def test_local_pod_from_the_container_source(netflow, facts, cgroup):
    """A client in a pod's cgroup: its bytes carry the pod, through pid_pods (while it lives) and through
    cgroup_pods; the server's (in no pod) carry none."""
    srv = listener("127.77.3.1")
    before = Scrape(netflow)
    live = CgroupClient(cgroup, srv, "127.77.3.2", up=9_000, down=900)
    facts.pid_pods = {live.proc.pid: ("team-a", "loader-0")}
    live.run()
    mid = Scrape(netflow, before.observation)
    assert flow(mid, before, "t3_srv", namespace="team-a", pod="loader-0") == (9_000, 900)
    live.close()
    short = CgroupClient(cgroup, srv, "127.77.3.2", up=5, down=6)
    short.run()
    short.close()
    after = Scrape(netflow, mid.observation)
    assert flow(after, before, "t3_srv", namespace="team-a", pod="loader-0") == (9_005, 906)
    assert flow(after, before, "t3_srv", namespace="", pod="") == (0, 0)
    assert flow(after, before, "t3_cli", namespace="", pod="") == (906, 9_005)
    # The same cgroup named by path instead of by process.
    facts.pid_pods = None
    facts.cgroup_pods = {"/" + cgroup.name: {"namespace": "team-b", "pod": "reader-1"}}
    third = CgroupClient(cgroup, srv, "127.77.3.2", up=77, down=7)
    third.run()
    third.close()
    final = Scrape(netflow, after.observation)
    assert flow(final, after, "t3_srv", namespace="team-b", pod="reader-1") == (77, 7)
    # The pod of the first client is no longer known: its series are dropped, the class keeps the bytes.
    assert final.total("vigil_tcp_flow_sent_bytes_total", namespace="team-a") == 0
    assert delta(final, before, "vigil_tcp_sent_segments_total", peer_class="t3_srv") > 0
    facts.cgroup_pods = None
    srv.close()


def test_per_class_rows_and_thresholds(netflow):
    srv = listener("127.77.4.1")
    exchange(srv, 2_000, 2_000, src="127.77.4.2")
    s = Scrape(netflow)
    rows = {f.entity: f for f in s.findings if f.check == "netflow.retransmits"}
    assert {"t4_srv", "t4_cli"} <= set(rows)
    assert s.finding("netflow.maps", "test-node").status == "ok"
    srv.close()


def test_once_table_through_the_cli(bpf_host, tmp_path):
    """`agent --once --only netflow`: a probe of its own, per-class rows in the table, exit 0."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("netflow:\n  classes:\n    t9: ['127.77.9.0/24']\n")
    srv = listener("127.77.9.1")
    c = connect(srv, src="127.77.9.2")
    c.up(1_500)
    try:
        p = subprocess.run([str(REPO / ".venv" / "bin" / "agent"), "--once", "--only", "netflow", "-c", str(cfg),
                            "--node-name", "n1", "-v"], capture_output=True, text=True, timeout=120, check=False)
    finally:
        c.close()
        srv.close()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "netflow.probe" in p.stdout and "sock_ops program attached" in p.stdout
    assert "netflow.retransmits  t9" in p.stdout
