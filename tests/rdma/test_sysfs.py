"""sysfs parsing quirks, on real captures: node_exporter's and prometheus/procfs's InfiniBand trees (mlx4, mlx5,
hfi1, i40iw), AMD's ionic mock data, bnxt_re's counter names from the kernel (fixtures/nodes/rdma-*/README.md
says which file each node comes from). No HCA is needed: the trees are read as a snapshot."""
from __future__ import annotations

import errno
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.sources.rdma import sysfs as rdma_sysfs
from agent.sources.rdma.collector import rdma_metrics
from agent.sources.rdma.sysfs import is_saturated, parse_counter, parse_rate, parse_state

from .helpers import IB, collector, copy_node, node_dir, read, run

E2E = node_dir("rdma-quirks") / "reference" / "node_exporter_e2e_infiniband_metrics.prom"


def ports(reading) -> dict:
    return {p.key: p for p in reading.ports}


def node_exporter_values() -> dict[tuple[str, str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(E2E.read_text()):
        for s in fam.samples:
            if "port" in s.labels:
                out[(s.name, s.labels["device"], s.labels["port"])] = s.value
    return out


def test_bytes_packets_and_rate_match_node_exporter_on_the_same_tree():
    """port_*_data counts 4-byte words: our bytes must equal node_exporter's for the same files."""
    ne = node_exporter_values()
    metrics = run(collector(node_dir("rdma-quirks")))[1].metrics
    pairs = {
        "vigil_rdma_port_received_bytes_total": "node_infiniband_port_data_received_bytes_total",
        "vigil_rdma_port_transmitted_bytes_total": "node_infiniband_port_data_transmitted_bytes_total",
        "vigil_rdma_port_received_packets_total": "node_infiniband_port_packets_received_total",
        "vigil_rdma_port_transmitted_packets_total": "node_infiniband_port_packets_transmitted_total",
        "vigil_rdma_port_rate_bytes_per_second": "node_infiniband_rate_bytes_per_second",
        "vigil_rdma_port_state_id": "node_infiniband_state_id",
        "vigil_rdma_port_physical_state_id": "node_infiniband_physical_state_id",
    }
    compared = 0
    for ours, theirs in pairs.items():
        for (name, device, port), value in ne.items():
            if name == theirs:
                assert metrics.value(ours, device=device, port=port) == value, (ours, device, port)
                compared += 1
    assert compared == 15  # every port-level bytes, packets, rate and state sample node_exporter has
    assert metrics.value("vigil_rdma_port_received_bytes_total", device="mlx4_0", port="1") == 4631917 * 4


def test_no_pma_counters_are_skipped_not_zero():
    """i40iw (iWARP) reads "N/A (no PMA)" in every counter: no counter series, but the port is still judged."""
    p = ports(read("rdma-quirks"))["i40iw0/1"]
    assert p.counters == {} and p.unavailable == 17
    assert p.up and p.octets("port_rcv_data") is None
    metrics = run(collector(node_dir("rdma-quirks")))[1].metrics
    assert metrics.value("vigil_rdma_port_received_bytes_total", device="i40iw0") is None
    assert metrics.value("vigil_rdma_port_errors_total", device="i40iw0") is None
    assert metrics.value("vigil_rdma_port_stats_unavailable", device="i40iw0", port="1") == 17
    assert metrics.value("vigil_rdma_port_state", device="i40iw0", port="1") == 1


def test_32bit_counter_stuck_at_max_is_flagged_but_64bit_values_are_not():
    metrics = run(collector(node_dir("rdma-quirks")))[1].metrics
    sat = lambda c: metrics.value("vigil_rdma_port_stat_saturated", device="mlx4_0", port="1", counter=c)  # noqa
    assert sat("port_xmit_wait") == 1  # 4294967295 in the real capture
    # 6825908347 > 2^32: the kernel filled it from the 64-bit extended counters, so it is not stuck.
    assert sat("port_rcv_packets") == 0
    assert metrics.value("vigil_rdma_port_received_packets_total", device="mlx4_0", port="1") == 6825908347
    assert metrics.value("vigil_rdma_port_stats_total", device="mlx4_0", port="1",
                         counter="port_xmit_wait") == 4294967295


@pytest.mark.parametrize("name,value,stuck", [
    ("link_downed", 255, True), ("link_downed", 254, False), ("symbol_error", 65535, True),
    ("local_link_integrity_errors", 15, True), ("excessive_buffer_overrun_errors", 15, True),
    ("port_xmit_discards", 65535, True), ("port_xmit_constraint_errors", 255, True),
    ("port_rcv_data", 4294967295, True), ("unicast_rcv_packets", 4294967295, False),
    ("vendor_specific", 255, False),
])
def test_counter_width_table(name, value, stuck):
    assert is_saturated(name, value) is stuck


def test_narrow_error_counters_at_max_warn_on_the_first_reading():
    reading, out = run(collector(node_dir("rdma-quirks")))
    f = [f for f in out.findings if f.status != "ok"]
    assert [(x.check, x.entity, x.severity) for x in f] == [("rdma.counters_saturated", "mlx5_0/1", "warning")]
    assert "symbol_error=65535" in f[0].message and "link_downed=255" in f[0].message
    assert "local_link_integrity_errors=15" in f[0].message


def test_counters_ext_is_used_when_the_32bit_counter_is_stuck_or_missing(tmp_path):
    """mlx4 has a 64-bit twin in counters_ext; it takes over when counters/ stopped at 2^32-1 or is missing."""
    node = copy_node("rdma-quirks", tmp_path)
    counters = node.joinpath(*IB, "mlx4_0", "ports", "1", "counters")
    ext = node.joinpath(*IB, "mlx4_0", "ports", "1", "counters_ext")
    (counters / "port_xmit_data").write_text("4294967295\n")
    (ext / "port_xmit_data_64").write_text("5000000000\n")
    (counters / "port_rcv_data").unlink()
    p = ports(collector(node).read())["mlx4_0/1"]
    assert p.data("port_xmit_data") == (5000000000, "counters_ext")
    assert p.octets("port_xmit_data") == 20000000000
    assert p.data("port_rcv_data") == (4631917, "counters_ext")
    # On port 2 counters/ says 0 and counters_ext 4631917: counters/ is the kernel's standard and wins,
    # as in node_exporter's own output (port_data_received_bytes_total 0).
    assert ports(collector(node).read())["mlx4_0/2"].octets("port_rcv_data") == 0


def test_hw_counters_lifespan_is_a_setting_not_a_counter():
    p = ports(read("rdma-8port-healthy"))["mlx5_0/1"]
    assert "lifespan" not in p.hw_counters and "lifespan" not in p.hw_gauges
    assert p.hw_counters["req_cqe_error"] == 3481 and p.hw_counters["resp_cqe_error"] == 8109
    metrics = rdma_metrics(read("rdma-8port-healthy"), 8)
    assert metrics.value("vigil_rdma_hw_stats_total", device="mlx5_0", counter="lifespan") is None
    assert metrics.value("vigil_rdma_hw_stats_total", device="mlx5_0", counter="local_ack_timeout_err") == 131


def test_blank_lines_around_values_are_ignored():
    """The real procfs mlx4_0 port 2 link_layer reads "InfiniBand\\n\\n"."""
    raw = node_dir("rdma-mixed-vendor").joinpath(*IB, "mlx4_0", "ports", "2", "link_layer").read_bytes()
    assert raw == b"InfiniBand\n\n"
    assert ports(read("rdma-mixed-vendor"))["mlx4_0/2"].link_layer == "InfiniBand"


@pytest.mark.parametrize("err", [errno.ENOENT, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS])
def test_one_unreadable_counter_skips_only_that_counter(monkeypatch, err):
    """Newer kernels fail read() (EINVAL, ENOSYS ...) where older ones wrote N/A: skip the counter, keep the port."""
    real = rdma_sysfs._read_bytes

    def failing(path):
        if str(path).endswith("mlx5_2/ports/1/counters/symbol_error"):
            raise OSError(err, os.strerror(err))
        return real(path)

    monkeypatch.setattr(rdma_sysfs, "_read_bytes", failing)
    reading, out = run(collector(node_dir("rdma-8port-healthy")))
    p = ports(reading)["mlx5_2/1"]
    assert "symbol_error" not in p.counters and p.unavailable == 1
    assert p.counters["link_downed"] == 0 and p.octets("port_rcv_data") is not None
    assert len(reading.ports) == 8
    assert all(f.status == "ok" for f in out.findings)
    assert out.metrics.value("vigil_rdma_port_errors_total", device="mlx5_2", type="symbol") is None
    assert out.metrics.value("vigil_rdma_port_errors_total", device="mlx5_1", type="symbol") == 0


@pytest.mark.timeout(20)
def test_a_directory_or_fifo_in_place_of_a_counter_is_skipped_without_hanging(tmp_path):
    node = copy_node("rdma-8port-healthy", tmp_path)
    counters = node.joinpath(*IB, "mlx5_0", "ports", "1", "counters")
    (counters / "symbol_error").unlink()
    (counters / "symbol_error").mkdir()  # read() fails with EISDIR
    (counters / "link_downed").unlink()
    os.mkfifo(counters / "link_downed")  # blocking open would hang forever with no writer
    p = ports(collector(node).read())["mlx5_0/1"]
    assert "symbol_error" not in p.counters and "link_downed" not in p.counters
    assert p.unavailable == 2 and p.counters["port_rcv_errors"] == 0


@pytest.mark.parametrize("text,value", [
    ("100 Gb/sec (4X EDR)", 12.5e9), ("25 Gb/sec (1X EDR)", 3.125e9), ("2.5 Gb/sec (1X SDR)", 312.5e6),
    ("400 Gb/sec (4X NDR)", 50e9), ("10 Gb/sec (4X)", 1.25e9), ("", None), (None, None), ("fast", None),
])
def test_rate(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text,parsed", [
    ("4: ACTIVE", (4, "ACTIVE")), ("5: LinkUp", (5, "LinkUp")), ("1: DOWN", (1, "DOWN")),
    ("2: Polling", (2, "Polling")), ("ACTIVE", (None, "ACTIVE")), (None, (None, None)),
])
def test_state(text, parsed):
    assert parse_state(text) == parsed


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("18126345378", 18126345378), ("N/A (no PMA)", None), ("", None), ("-1", None), ("0x10", 16),
])
def test_counter_text(text, value):
    assert parse_counter(text) == value


def test_vendors_with_different_counter_sets():
    by_key = ports(read("rdma-mixed-vendor"))
    assert sorted(by_key) == ["hfi1_0/1", "i40iw0/1", "ionic_1/1", "mlx4_0/1", "mlx4_0/2"]
    assert by_key["hfi1_0/1"].octets("port_xmit_data") == 273558326543 * 4
    assert by_key["hfi1_0/1"].hw_counters == {}
    ionic = by_key["ionic_1/1"]
    assert ionic.link_layer == "Ethernet" and ionic.counters == {} and ionic.rate is None
    assert ionic.hw_counters["tx_rdma_ucast_bytes"] == 3489656928
    assert ionic.hw_counters["req_rx_dup_response"] == 34
    assert "resp_rx_outouf_seq" in ionic.hw_counters  # upstream's spelling, kept: it is the file name
    metrics = rdma_metrics(read("rdma-mixed-vendor"), 5)
    assert metrics.value("vigil_rdma_device_info", device="hfi1_0", hca_type="") == 1
    assert metrics.value("vigil_rdma_port_rate_bytes_per_second", device="ionic_1") is None
    assert metrics.value("vigil_rdma_hw_stats_total", device="ionic_1", counter="rx_rdma_ucast_bytes") == 3087001744


def test_bnxt_re_resource_counts_are_gauges_and_their_drop_is_not_a_reset(tmp_path):
    """bnxt_re names from the kernel source (tests/rdma/data): active_* are current resource counts. No real
    bnxt_re values exist in any public capture, so the values here are made up (i for the i-th name)."""
    names = [n.strip() for n in (node_dir("rdma-8port-healthy").parents[2] / "tests" / "rdma" / "data" /
                                 "bnxt_re_hw_counter_names.txt").read_text().splitlines()
             if n.strip() and not n.startswith("#")]
    assert len(names) == 67
    node = tmp_path / "bnxt"
    port = node.joinpath(*IB, "bnxt_re0", "ports", "1")
    (port / "hw_counters").mkdir(parents=True)
    for i, n in enumerate(names):
        (port / "hw_counters" / n).write_text(f"{i + 1}\n")
    (port / "state").write_text("4: ACTIVE\n")
    (port / "phys_state").write_text("5: LinkUp\n")
    (port / "link_layer").write_text("Ethernet\n")
    first, _ = run(collector(node, expect=None))
    p = ports(first)["bnxt_re0/1"]
    assert sorted(p.hw_gauges) == sorted(n for n in names if n.startswith("active_")) and len(p.hw_gauges) == 7
    assert len(p.hw_counters) == 60 and p.hw_counters["rx_out_of_buffer"] == 67
    (port / "hw_counters" / "active_qps").write_text("1\n")  # QPs closed: fewer, not a reset
    c = collector(node, expect=None)
    second, out = run(c, previous=first, elapsed=10.0)
    assert out.metrics.value("vigil_rdma_hw_resources", device="bnxt_re0", resource="active_qps") == 1
    assert out.metrics.value("vigil_rdma_port_stats_resets_total", device="bnxt_re0", port="1") == 0
    (port / "hw_counters" / "rx_pkts").write_text("0\n")  # a real counter going back is one
    third, out = run(c, previous=second, elapsed=10.0)
    assert out.metrics.value("vigil_rdma_port_stats_resets_total", device="bnxt_re0", port="1") == 1
