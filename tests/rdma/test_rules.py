"""RDMA health rules: a flapping link, error rates, counter resets, saturation, ignored ports, port counts and
the rdma config section. Readings come from the fixture nodes (real mlx5 data, derived faults; see their
READMEs) or from small edits of them."""
from __future__ import annotations

import copy

import pytest

from agent.base.collector import NoData, Observation
from agent.sources.rdma.collector import RdmaSettings
from agent.base.config import ConfigError, from_mapping
from agent.base.findings import node_status
from agent.sources.rdma import rules

from .helpers import collector, node_dir, one, problems, read, run


def flap(settings: RdmaSettings | None = None, elapsed: float = 10.0):
    a, b = read("rdma-flap-a"), read("rdma-flap-b")
    c = collector(node_dir("rdma-flap-b"), **(vars(settings) if settings else {}))
    return c.evaluate(b, Observation(a, 0.0), elapsed)


def test_flap_pair_gives_link_downed_fatal_and_symbol_warning():
    out = flap()
    assert problems(out.findings) == [("rdma.link_downed", "mlx5_2/1", "unhealthy", "fatal"),
                                      ("rdma.symbol_errors", "mlx5_2/1", "unhealthy", "warning")]
    f = one(out.findings, "rdma.link_downed", "mlx5_2/1")
    assert f.value == 1 and "link_downed 0 -> 1" in f.message
    assert one(out.findings, "rdma.symbol_errors", "mlx5_2/1").value == 150.0
    assert one(out.findings, "rdma.link_downed", "mlx5_0/1").status == "ok"
    assert node_status(out.findings) == "unhealthy"


def test_each_flap_snapshot_alone_is_healthy():
    """A flap is only visible between two readings: b alone shows an ACTIVE port with link_downed 1."""
    for name in ("rdma-flap-a", "rdma-flap-b"):
        _, out = run(collector(node_dir(name)))
        assert problems(out.findings) == [], name
        assert not [f for f in out.findings if f.check in ("rdma.link_downed", "rdma.symbol_errors")]


def test_throughput_between_the_flap_readings():
    m = flap().metrics
    assert m.value("vigil_rdma_port_throughput_bytes_per_second", device="mlx5_0", direction="received") == 240e6
    assert m.value("vigil_rdma_port_throughput_bytes_per_second", device="mlx5_0", direction="transmitted") == 250e6


def test_symbol_threshold_comes_from_config():
    out = flap(RdmaSettings(symbol_error_warning_per_second=200.0))
    assert one(out.findings, "rdma.symbol_errors", "mlx5_2/1").status == "ok"
    assert one(out.findings, "rdma.link_downed", "mlx5_2/1").status == "unhealthy"


def test_counters_going_backwards_are_a_reset_not_a_negative_rate():
    """b then a: every counter drops (a driver reload). Nothing negative, nothing fires, resets are counted."""
    a, b = read("rdma-flap-a"), read("rdma-flap-b")
    c = collector(node_dir("rdma-flap-a"))
    out = c.evaluate(a, Observation(b, 0.0), 10.0)
    assert problems(out.findings) == []
    for fam in out.metrics:
        for name, labels, value in fam.samples:
            if name == "vigil_rdma_port_throughput_bytes_per_second":
                assert value >= 0, (labels, value)
    # After a reset the traffic since the reset is counted from zero.
    mlx5_0 = next(p for p in a.ports if p.key == "mlx5_0/1")
    assert out.metrics.value("vigil_rdma_port_throughput_bytes_per_second", device="mlx5_0",
                             direction="received") == mlx5_0.octets("port_rcv_data") / 10
    assert out.metrics.value("vigil_rdma_port_stats_resets_total", device="mlx5_0", port="1") == 1
    assert one(out.findings, "rdma.symbol_errors", "mlx5_2/1").value == 0
    # The tally rides on the reading to the next cycle and only grows.
    b2 = read("rdma-flap-b")
    out2 = c.evaluate(b2, Observation(a, 0.0), 10.0)
    assert out2.metrics.value("vigil_rdma_port_stats_resets_total", device="mlx5_0", port="1") == 1
    assert b2.resets["mlx5_0/1"] == 1


def test_link_down_after_a_reset_still_counts():
    """link_downed 3 -> 1: cleared in between, and the link went down once since. Counted from zero."""
    a = read("rdma-flap-b")
    next(p for p in a.ports if p.key == "mlx5_2/1").counters["link_downed"] = 3
    b = read("rdma-flap-b")
    findings = rules.evaluate(b, RdmaSettings(), 8, "n", a, 10.0)
    f = one(findings, "rdma.link_downed", "mlx5_2/1")
    assert f.status == "unhealthy" and f.value == 1 and "1 since a counter reset" in f.message
    b.ports[2].counters["link_downed"] = 0  # cleared and nothing since: no link down
    assert one(rules.evaluate(b, RdmaSettings(), 8, "n", a, 10.0), "rdma.link_downed", "mlx5_2/1").status == "ok"


def test_delta_never_negative():
    assert rules.delta(10, 15) == (5, False)
    assert rules.delta(15, 10) == (10, True)
    assert rules.delta(None, 3) == (None, False)
    assert rules.delta(3, None) == (None, False)


def test_link_integrity_errors_warn_at_any_increase_by_default():
    a = read("rdma-flap-a")
    b = copy.deepcopy(a)
    next(p for p in b.ports if p.key == "mlx5_6/1").counters["local_link_integrity_errors"] = 1
    f = one(rules.evaluate(b, RdmaSettings(), 8, "n", a, 10.0), "rdma.link_integrity_errors", "mlx5_6/1")
    assert (f.status, f.severity, f.value) == ("unhealthy", "warning", 0.1)
    relaxed = RdmaSettings(link_integrity_warning_per_second=1.0)
    assert one(rules.evaluate(b, relaxed, 8, "n", a, 10.0), "rdma.link_integrity_errors", "mlx5_6/1").status == "ok"


def test_saturated_counter_is_not_judged_as_a_rate():
    """Stuck at 65535, symbol_error cannot move: the saturation warning speaks, not a reassuring 0/s."""
    a = read("rdma-flap-a")
    for p in a.ports:
        if p.key == "mlx5_1/1":
            p.counters["symbol_error"] = 65535
            p.counters["link_downed"] = 255
    b = copy.deepcopy(a)
    findings = rules.evaluate(b, RdmaSettings(), 8, "n", a, 10.0)
    assert not [f for f in findings if f.entity == "mlx5_1/1" and f.check in ("rdma.symbol_errors",
                                                                               "rdma.link_downed")]
    f = one(findings, "rdma.counters_saturated", "mlx5_1/1")
    assert f.status == "unhealthy" and f.severity == "warning" and f.value == 2


def test_port_down_is_fatal_with_a_hint_and_only_one_finding():
    _, out = run(collector(node_dir("rdma-port-down")))
    down = [f for f in out.findings if f.entity == "mlx5_3/1"]
    assert [(f.check, f.status, f.severity) for f in down] == [("rdma.port_state", "unhealthy", "fatal")]
    assert "DOWN/Polling" in down[0].message and "no signal from the peer" in down[0].message
    assert out.metrics.value("vigil_rdma_port_state", device="mlx5_3", port="1") == 0
    assert out.metrics.value("vigil_rdma_port_state_id", device="mlx5_3", port="1") == 1
    assert out.metrics.value("vigil_rdma_port_physical_state_id", device="mlx5_3", port="1") == 2


def test_link_up_but_not_active_is_fatal():
    r = read("rdma-8port-healthy")
    p = r.ports[4]
    p.state_id, p.state = 2, "INIT"
    f = one(rules.evaluate(r, RdmaSettings(), 8, "n"), "rdma.port_state", p.key)
    assert f.status == "unhealthy" and "subnet manager" in f.message


@pytest.mark.parametrize("ignore", [["mlx5_3/1"], ["mlx5_3"]])
def test_ignored_port_is_reported_but_not_judged(ignore):
    _, out = run(collector(node_dir("rdma-port-down"), ignore_ports=ignore))
    assert problems(out.findings) == []
    f = one(out.findings, "rdma.port_state", "mlx5_3/1")
    assert "rdma.ignore_ports" in f.message and "DOWN/Polling" in f.message
    assert out.metrics.value("vigil_rdma_port_state", device="mlx5_3", port="1") == 0


def test_fewer_ports_than_expected_is_fatal():
    _, out = run(collector(node_dir("rdma-8port-healthy"), expect=9))
    f = one(out.findings, "rdma.port_count", "rdma-8port-healthy")
    assert (f.status, f.severity, f.value, f.threshold) == ("unhealthy", "fatal", 8, 9)
    _, out = run(collector(node_dir("rdma-8port-healthy"), expect=None))
    assert one(out.findings, "rdma.port_count", "rdma-8port-healthy").message == "8 RDMA ports"
    assert out.metrics.value("vigil_rdma_ports_expected") is None and out.metrics.value("vigil_rdma_ports") == 8


def test_no_rdma_devices_is_no_data_unless_ports_are_expected(tmp_path):
    (tmp_path / "sys").mkdir()
    with pytest.raises(NoData):
        collector(tmp_path, expect=None).read()
    (tmp_path / "sys" / "class" / "infiniband").mkdir(parents=True)  # present but empty, as on a plain H100
    with pytest.raises(NoData):
        collector(tmp_path, expect=0).read()
    _, out = run(collector(tmp_path, expect=8))
    f = one(out.findings, "rdma.port_count", tmp_path.name)
    assert f.status == "unhealthy" and f.value == 0 and f.threshold == 8


def config(section: dict):
    return from_mapping({"rdma": section}, {"rdma": RdmaSettings}).section("rdma")


def test_config_section_parses():
    s = config({"symbol_error_warning_per_second": 1, "ignore_ports": ["mlx5_4", "mlx5_5/1"], "udev": False})
    assert s.symbol_error_warning_per_second == 1.0 and s.ignore_ports == ["mlx5_4", "mlx5_5/1"] and not s.udev


@pytest.mark.parametrize("section,key", [
    ({"symbol_error_warning_per_second": -1}, "rdma.symbol_error_warning_per_second"),
    ({"link_integrity_warning_per_second": "often"}, "rdma.link_integrity_warning_per_second"),
    ({"ignore_ports": ["mlx5_0/one"]}, "rdma.ignore_ports[0]"),
    ({"ignore_ports": "mlx5_0"}, "rdma.ignore_ports"),
    ({"symbol_errors_per_second": 1}, "rdma.symbol_errors_per_second"),
    ({"interval_seconds": 0}, "rdma.interval_seconds"),
])
def test_bad_config_names_the_key(section, key):
    with pytest.raises(ConfigError) as e:
        config(section)
    assert str(e.value).startswith(key + ":")
