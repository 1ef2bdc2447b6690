"""The RDMA collector's /metrics output on every rdma fixture node: `promtool check metrics` (the real
promtool), metric types, and the values a dashboard would show for each node."""
from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.base.collector import Observation
from agent.base.metrics import render

from .helpers import RDMA_NODES, collector, node_dir, read, run


def flap_output():
    a, b = read("rdma-flap-a"), read("rdma-flap-b")
    return collector(node_dir("rdma-flap-b")).evaluate(b, Observation(a, 0.0), 10.0)


def test_every_rdma_fixture_is_covered():
    assert RDMA_NODES == ["rdma-8port-healthy", "rdma-flap-a", "rdma-flap-b", "rdma-mixed-vendor",
                          "rdma-port-down", "rdma-quirks"]


@pytest.mark.parametrize("node", [*RDMA_NODES, "flap a->b"])
def test_promtool_accepts_the_exposition(node, promtool):
    out = flap_output() if node == "flap a->b" else run(collector(node_dir(node)))[1]
    text = render(out.metrics).decode()
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name in ("vigil_rdma_port_received_bytes", "vigil_rdma_port_errors", "vigil_rdma_port_stats_resets"):
        if name in types:
            assert types[name] == "counter", name
    assert types["vigil_rdma_port_state"] == "gauge"


def test_flap_exposition_has_rates_and_reset_tallies():
    text = render(flap_output().metrics).decode()
    assert 'vigil_rdma_port_throughput_bytes_per_second{device="mlx5_2",direction="received",port="1"}' in text
    assert 'vigil_rdma_port_errors_total{device="mlx5_2",port="1",type="link_downed"} 1.0' in text
    assert 'vigil_rdma_port_errors_total{device="mlx5_2",port="1",type="symbol"} 1500.0' in text


def test_healthy_8_port_node_values():
    m = run(collector(node_dir("rdma-8port-healthy")))[1].metrics
    assert m.value("vigil_rdma_ports") == 8 and m.value("vigil_rdma_ports_expected") == 8
    for i in range(8):
        assert m.value("vigil_rdma_port_state", device=f"mlx5_{i}", port="1") == 1
        assert m.value("vigil_rdma_port_info", device=f"mlx5_{i}", port="1", link_layer="InfiniBand",
                       rate="25 Gb/sec (1X EDR)", fw="14.28.2006") == 1
    # The real mlx5_0's counters, words turned into bytes; replicas scaled by (100 + 7i)%.
    assert m.value("vigil_rdma_port_received_bytes_total", device="mlx5_0") == 18126345378 * 4
    assert m.value("vigil_rdma_port_transmitted_bytes_total", device="mlx5_0") == 2880761508848 * 4
    assert m.value("vigil_rdma_port_transmitted_packets_total", device="mlx5_0") == 10907922116
    assert m.value("vigil_rdma_port_received_bytes_total", device="mlx5_1") == 18126345378 * 107 // 100 * 4
    assert m.value("vigil_rdma_hw_stats_total", device="mlx5_0", counter="req_cqe_error") == 3481
    assert m.value("vigil_rdma_hotplug_info", mode="rescan") == 1


def test_port_down_node_values():
    m = run(collector(node_dir("rdma-port-down")))[1].metrics
    states = {i: m.value("vigil_rdma_port_state", device=f"mlx5_{i}", port="1") for i in range(8)}
    assert states == {0: 1, 1: 1, 2: 1, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1}


def test_mixed_vendor_node_values():
    m = run(collector(node_dir("rdma-mixed-vendor")))[1].metrics
    assert m.value("vigil_rdma_ports") == 5
    assert m.value("vigil_rdma_port_info", device="hfi1_0", rate="100 Gb/sec (4X EDR)", fw="1.27.0") == 1
    assert m.value("vigil_rdma_port_transmitted_bytes_total", device="mlx4_0", port="2") == 26540356890 * 4
    assert m.value("vigil_rdma_port_stats_total", device="mlx4_0", port="1", counter="port_xmit_wait") == 3599
