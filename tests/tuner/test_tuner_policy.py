"""The tuner's pure decisions: value parsing, the three policies, file-limit pairs, and how the mode is chosen."""
from __future__ import annotations

import math

import pytest

from agent.base.collector import RunMode
from agent.sources.tuner.apply import resolve_mode
from agent.sources.tuner.policy import RlimitEntry, SysctlEntry, decide, decide_rlimit
from agent.sources.tuner.profile import key_parts
from agent.sources.tuner.values import fmt, parse

INF = math.inf


def test_values_parse_as_the_kernel_prints_them():
    assert parse("4096\t131072\t6291456\n") == (4096, 131072, 6291456)  # tabs, as tcp_rmem reads
    assert parse("bbr\n") == ("bbr",)
    assert parse("-1") == (-1,)
    assert parse("9223372036854775807") == (2**63 - 1,)  # fs.file-max on systemd hosts
    assert fmt(parse("4096\t87380\t16777216")) == "4096 87380 16777216"  # what is written: spaces


def test_key_parts_follow_sysctl_and_refuse_escapes():
    assert key_parts("net.ipv4.conf.eth0/100.rp_filter") == ("net", "ipv4", "conf", "eth0.100", "rp_filter")
    for bad in ("vm..max_map_count", "net.ipv4.conf./..rp_filter", "vm.max map", "../../etc/passwd"):
        with pytest.raises(ValueError):
            key_parts(bad)


def minimum(value):
    return SysctlEntry("k", parse(str(value)), "minimum")


def test_minimum_raises_only_the_fields_that_are_below():
    d = decide(minimum("4096 87380 16777216"), parse("4096 131072 6291456"))
    assert (d.satisfied, d.target, d.verb) == (False, (4096, 131072, 16777216), "raise")
    assert decide(minimum(262144), parse("1048576")).satisfied is True  # higher is left alone


def test_minimum_cannot_judge_words_or_other_field_counts():
    assert decide(minimum(5), ("bbr",)).satisfied is None
    assert decide(minimum("1 2 3"), (1, 2)).satisfied is None


def test_exact_lowers_raises_or_sets():
    e = SysctlEntry("k", (0,), "exact")
    assert (decide(e, (1,)).target, decide(e, (1,)).verb) == ((0,), "lower")
    assert decide(e, (0,)).satisfied is True
    cc = SysctlEntry("net.ipv4.tcp_congestion_control", ("bbr",), "exact")
    assert (decide(cc, ("cubic",)).target, decide(cc, ("cubic",)).verb) == (("bbr",), "set")


def test_report_judges_but_never_targets():
    d = decide(SysctlEntry("k", (10,), "report"), (5,))
    assert d.satisfied is False and d.target is None
    assert decide(SysctlEntry("k", None, "report"), (5,)).satisfied is None  # nothing declared


@pytest.mark.parametrize("policy,soft,hard,live,target", [
    ("minimum", 4096, None, (1024, 524288), (4096, 524288)),
    ("minimum", 1048576, 1048576, (1024, 524288), (1048576, 1048576)),
    ("minimum", 2048, None, (1024, 1024), (2048, 2048)),  # soft above hard drags hard up
    ("minimum", INF, INF, (8388608, 8388608), (INF, INF)),  # memlock unlimited
    ("exact", 1024, None, (4096, 8192), (1024, 8192)),
    ("exact", None, 512, (1024, 4096), (512, 512)),  # hard below soft drags soft down
])
def test_rlimit_targets_keep_soft_within_hard(policy, soft, hard, live, target):
    d = decide_rlimit(RlimitEntry("p", "nofile", soft, hard, policy), live)
    assert d.satisfied is False and d.target == target
    assert d.target[0] <= d.target[1]


def test_rlimit_minimum_never_lowers():
    e = RlimitEntry("p", "nofile", 1024, 1024, "minimum")
    assert decide_rlimit(e, (4096, INF)).satisfied is True


@pytest.mark.parametrize("configured,shared,replay,mode", [
    ("report", {}, False, "report"),  # the shipped default writes nothing
    ("report", {"tuner_mode": "enforce"}, False, "enforce"),  # the flag wins over the config
    ("enforce", {"once": True}, False, "dry-run"),  # --once never writes by itself
    ("enforce", {"once": True, "tuner_mode": "enforce"}, False, "dry-run"),  # ...not even with the flag
    ("report", {"once": True, "tune": True}, False, "enforce"),  # --once --tune writes
    ("enforce", {"once": True, "tune": True, "tuner_mode": "report"}, False, "report"),  # an explicit mode stays
    ("enforce", {"once": True, "tune": True}, True, "dry-run"),  # a snapshot is never written
])
def test_mode_resolution(configured, shared, replay, mode):
    assert resolve_mode(configured, RunMode(**shared), replay)[0] == mode
