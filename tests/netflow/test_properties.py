"""Property tests of the inet_diag decoder (issue 12, item 4). Inputs: dump buffers built as the kernel
lays them out (tests/netflow/test_inet_diag.py's builders, checked there against pyroute2 on this machine's
real sockets): IPv4 and IPv6 sockets with tcp_info, a cgroup id and the probe's socket storage, then
NLMSG_DONE; with bytes changed, inserted or cut off. Properties: decode() with an errors list never raises,
without one raises nothing but DumpError; and an unchanged buffer decodes as before."""
from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from agent.sources.netflow import inet_diag
from tests.netflow.test_inet_diag import diag_msg, done, nla, tcp_info
from tests.support.mutate import FAST

STORAGE = struct.pack("<QIIBBBB4x", 4242, 3, 0, 2, 1, 1, 0)
NESTED = nla(inet_diag.SK_DIAG_BPF_STORAGE | inet_diag.NLA_F_NESTED,
             nla(inet_diag.SK_DIAG_BPF_STORAGE_MAP_VALUE, STORAGE))
BUFFER = (diag_msg(attrs=nla(inet_diag.INET_DIAG_INFO, tcp_info()) + nla(inet_diag.INET_DIAG_CGROUP_ID,
                                                                        struct.pack("=Q", 77))
                   + nla(inet_diag.INET_DIAG_SK_BPF_STORAGES | inet_diag.NLA_F_NESTED, NESTED))
          + diag_msg(socket.AF_INET6, "fd00::1", "fd00::2", attrs=nla(inet_diag.INET_DIAG_INFO, tcp_info(length=104)))
          + done())
BASE = inet_diag.decode(BUFFER)


@st.composite
def buffers(draw):
    raw = bytearray(BUFFER)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        at = draw(st.integers(0, len(raw)))
        if op == "set" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = draw(st.binary(max_size=16))
        else:
            del raw[at:at + draw(st.integers(1, 40))]
    return bytes(raw)


def check_decode(buf: bytes) -> None:
    errors: list[int] = []
    socks, _ = inet_diag.decode(buf, errors)
    for s in socks:
        assert s.family in (socket.AF_INET, socket.AF_INET6)
    try:
        inet_diag.decode(buf)
    except inet_diag.DumpError:  # documented: an NLMSG_ERROR in a dump
        pass


@FAST
@given(buffers())
def test_inet_diag_decode_never_raises(buf):
    check_decode(buf)


def test_unknown_family_costs_that_socket_only():
    bad = bytearray(diag_msg())
    bad[16] = 99  # inet_diag_msg.idiag_family: neither AF_INET nor AF_INET6
    socks, complete = inet_diag.decode(bytes(bad) + BUFFER)
    assert (socks, complete) == BASE


TARGETS = {"inet_diag": (buffers(), check_decode)}
