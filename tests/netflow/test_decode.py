"""Pure decoders of bpf/tcpflow.c's map entries, packed by hand as the kernel lays them out, and the payload
arithmetic shared with the kernel program. The root tests check the same layouts against the running kernel."""
import re
import struct

import pytest

from agent.sources.netflow import decode
from agent.sources.netflow.decode import (CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK,
    RTT_BOUNDS_US, Totals, live_payload)
from tests.support import ROOT

C_SOURCE = (ROOT / "bpf" / "tcpflow.c").read_text()


def test_class_stats():
    raw = struct.pack("<7Q", 3, 4, 1, 2, 5, 900, 6) + struct.pack(f"<{decode.RTT_BUCKETS}Q", *range(decode.RTT_BUCKETS))
    s = decode.class_stats(raw)
    assert s.opens == (3, 4) and s.connect_failed == 1 and s.closes == (2, 5)
    assert (s.rtt_sum_us, s.rtt_count) == (900, sum(range(decode.RTT_BUCKETS)))  # the count: the buckets' sum
    assert s.rtt_buckets == tuple(range(decode.RTT_BUCKETS))


def test_agg_key_and_totals():
    assert decode.agg_key(struct.pack("<IIQ", 7, 0, 1 << 40)) == (7, 1 << 40)
    assert decode.totals(struct.pack("<4Q", 1, 2, 3, 4)) == Totals(1, 2, 3, 4)


def test_record():
    raw = struct.pack("<4QQIBBBB", 1000, 333, 2, 9, 4242, 57, 3, decode.DIR_PASSIVE, decode.REC_ORPHAN, LAST_ACK)
    r = decode.record(99, raw)
    assert r == decode.Record(99, Totals(1000, 333, 2, 9), 4242, 57, 3, decode.DIR_PASSIVE, decode.REC_ORPHAN,
                              LAST_ACK)


def test_sk_state():
    raw = struct.pack("<QIIBBBB4xI4x", 77, 12, 555, 4, decode.DIR_ACTIVE, 1, 1, 4242)
    assert decode.sk_state(raw) == decode.SkState(77, 12, 4, decode.DIR_ACTIVE, True)
    assert decode.SK_STATE_SIZE == 32  # struct sk_state in bpf/tcpflow.c, its u32 slot included


@pytest.mark.parametrize("us,bucket", [(0, 0), (25, 0), (26, 1), (1000, 5), (1001, 6), (2_500_000, 15),
                                       (2_500_001, 16)])
def test_rtt_bucket_bounds_are_inclusive(us, bucket):
    assert decode.rtt_bucket(us) == bucket


def test_c_and_python_agree_on_constants():
    """The bounds and slots are written twice (C and Python); keep them in step."""
    bounds = [int(x) for x in re.findall(r"else if \(us <= (\d+)\) b = \d+;", C_SOURCE)]
    first = re.search(r"if \(us <= (\d+)\) b = 0;", C_SOURCE)
    assert [int(first.group(1)), *bounds] == list(RTT_BOUNDS_US)
    assert f"#define RTT_BUCKETS {decode.RTT_BUCKETS}" in C_SOURCE
    for i, name in enumerate(decode.COUNTERS):
        assert f"#define C_{name.upper()} {i}" in C_SOURCE
    assert "#define DIR_ACTIVE 0" in C_SOURCE and "#define DIR_PASSIVE 1" in C_SOURCE
    assert f"#define REC_ORPHAN {decode.REC_ORPHAN}" in C_SOURCE


@pytest.mark.parametrize("acked,received,state,active,expect", [
    (1, 0, ESTABLISHED, True, (0, 0)),           # just connected: the SYN
    (1001, 333, ESTABLISHED, True, (1000, 333)),
    (333, 1000, ESTABLISHED, False, (333, 1000)),  # accepted: no SYN in bytes_acked
    (1002, 333, FIN_WAIT2, True, (1000, 333)),     # our FIN acknowledged
    (1001, 333, FIN_WAIT1, True, (1000, 333)),     # our FIN not yet
    (333, 1001, CLOSE_WAIT, False, (333, 1000)),   # the peer's FIN received
    (333, 1001, LAST_ACK, False, (333, 1000)),
    (1001, 334, CLOSING, True, (1000, 333)),
    (0, 0, ESTABLISHED, True, (0, 0)),             # never negative
])
def test_live_payload(acked, received, state, active, expect):
    assert live_payload(acked, received, state, active) == expect


def test_totals_arithmetic_never_goes_negative():
    assert Totals(5, 5, 1, 1).minus(Totals(7, 1, 0, 3)) == Totals(0, 4, 1, 0)
    assert Totals(1, 2, 3, 4).plus(Totals(1, 1, 1, 1)) == Totals(2, 3, 4, 5)
    assert Totals(1, 9, 3, 0).at_least(Totals(2, 1, 3, 1)) == Totals(2, 9, 3, 1)


def test_port_words_pack_class_plus_one_eight_ports_a_word():
    """bpf/tcpflow.c reads byte port % 8 of word port / 8, 0 meaning no class: class 0 must still be found."""
    from agent.sources.netflow.probe import port_words

    words = port_words([(80, 0), (81, 3), (4791, 31), (65535, 2)])
    assert words == {10: 1 | 4 << 8, 598: 32 << 56, 8191: 3 << 56}
