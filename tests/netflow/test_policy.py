"""Peer classification (pure): the rule the kernel program applies too (ports, then longest prefix, then the
fallback), its encoding for the kernel's maps, and the settings that feed it."""
import ipaddress

import pytest

from agent.sources.netflow.collector import NetflowSettings
from agent.base.config import ConfigError, from_mapping
from agent.sources.netflow.policy import MAX_CLASSES, PeerPolicy, PolicyError, host_networks

POLICY = PeerPolicy.build(
    {"node_internal": ["127.0.0.0/8", "::1/128", "10.0.0.5/32"], "pod_network": ["10.244.0.0/16", "fd00:10:244::/56"],
     "service_network": ["10.96.0.0/12"], "dns": ["10.96.0.10/32"]},
    {53: "dns", 2049: "storage", 29500: "nccl_bootstrap"})


def name(peer, rport=0, lport=0):
    return POLICY.name(POLICY.classify(peer, rport, lport))


def test_fallback_is_class_zero():
    assert POLICY.names[0] == "external"
    assert name("8.8.8.8", 443) == "external"
    assert name("2001:db8::1", 443) == "external"


def test_longest_prefix_wins():
    assert name("10.96.0.10", 8080) == "dns"  # /32 inside the /12 service network
    assert name("10.96.3.4", 8080) == "service_network"
    assert name("10.244.7.9", 8080) == "pod_network"
    assert name("fd00:10:244:12::9", 8080) == "pod_network"


def test_ports_of_interest_come_before_addresses():
    assert name("10.244.7.9", 2049) == "storage"  # remote port: an NFS server in the pod network
    assert name("10.244.7.9", 40000, 29500) == "nccl_bootstrap"  # local port: we serve the bootstrap store
    assert name("8.8.8.8", 53) == "dns"


def test_ipv4_mapped_ipv6_is_classified_as_ipv4():
    assert name("::ffff:10.244.1.2", 8080) == "pod_network"
    assert name("::ffff:127.0.0.1", 8080) == "node_internal"


def test_kernel_entries_encode_ipv4_as_mapped_ipv6():
    lpm, ports = POLICY.kernel_entries()
    by_net = {(plen, addr): cid for plen, addr, cid in lpm}
    v4 = b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address("10.244.0.0").packed
    assert by_net[(96 + 16, v4)] == POLICY.names.index("pod_network")
    assert by_net[(56, ipaddress.ip_address("fd00:10:244::").packed)] == POLICY.names.index("pod_network")
    assert ports == sorted((p, POLICY.names.index(c)) for p, c in
                           [(53, "dns"), (2049, "storage"), (29500, "nccl_bootstrap")])


def test_json_round_trip_keeps_the_rule():
    again = PeerPolicy.from_json(POLICY.to_json())
    for peer, rport, lport in [("10.96.0.10", 1, 2), ("10.244.1.1", 2049, 3), ("1.1.1.1", 1, 29500), ("::1", 5, 6)]:
        assert again.classify(peer, rport, lport) == POLICY.classify(peer, rport, lport)


def test_first_class_to_claim_a_network_keeps_it():
    p = PeerPolicy.build({"a": ["10.0.0.0/8"], "b": ["10.0.0.0/8"]}, {})
    assert p.name(p.classify("10.1.2.3")) == "a"


def test_host_addresses_join_as_host_routes():
    assert host_networks(["10.0.0.5", "fe80::1%eth0", "bogus"]) == ["10.0.0.5/32", "fe80::1/128"]


@pytest.mark.parametrize("classes,ports,msg", [
    ({"Bad-Name": ["10.0.0.0/8"]}, {}, "class name"),
    ({"a": ["10.0.0.0/33"]}, {}, "classes.a"),
    ({}, {0: "a"}, "ports.0"),
    ({f"c{i}": [] for i in range(MAX_CLASSES)}, {}, f"more than {MAX_CLASSES} classes"),
])
def test_bad_policies_name_the_entry(classes, ports, msg):
    with pytest.raises(PolicyError, match=msg):
        PeerPolicy.build(classes, ports)


def test_settings_check_reports_the_config_key():
    with pytest.raises(ConfigError, match=r"^netflow\.classes\.pod_network: "):
        from_mapping({"netflow": {"classes": {"pod_network": ["10.244.0.0/99"]}}}, {"netflow": NetflowSettings})
    with pytest.raises(ConfigError, match=r"^netflow\.record_entries"):
        from_mapping({"netflow": {"record_entries": 0}}, {"netflow": NetflowSettings})
    cfg = from_mapping({"netflow": {"ports": {9000: "storage"}, "classes": {"pod_network": ["10.244.0.0/16"]}}},
                       {"netflow": NetflowSettings})
    p = cfg.section("netflow").policy([])
    assert p.name(p.classify("1.2.3.4", 9000)) == "storage"
    assert p.name(p.classify("10.244.0.1", 1)) == "pod_network"
