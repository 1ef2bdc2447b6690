"""inet_diag: the request encoder and the pure decoder of dump messages (hand-built buffers), then the decoder
against pyroute2's on a real dump of this machine's sockets."""
import socket
import struct

import pytest

from agent.sources.netflow import inet_diag
from agent.sources.netflow.decode import ESTABLISHED, SkState

NLMSG = struct.Struct("=IHHII")


def nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def tcp_info(rtt=57, total_retrans=3, acked=1001, received=333, segs_out=12, length=232):
    b = bytearray(length)
    b[0] = ESTABLISHED
    struct.pack_into("=I", b, 68, rtt)
    struct.pack_into("=I", b, 100, total_retrans)
    if length >= 136:
        struct.pack_into("=QQ", b, 120, acked, received)
    if length >= 140:
        struct.pack_into("=I", b, 136, segs_out)
    return bytes(b)


def diag_msg(family=socket.AF_INET, src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=2049, cookie=(1 << 33) + 5,
             attrs=b""):
    pad = 16 - (4 if family == socket.AF_INET else 16)
    s = socket.inet_pton(family, src) + b"\0" * pad
    d = socket.inet_pton(family, dst) + b"\0" * pad
    body = struct.pack("=BBBBHH16s16sIIIIIIII", family, ESTABLISHED, 0, 0, socket.htons(sport), socket.htons(dport),
                       s, d, 0, cookie & 0xFFFFFFFF, cookie >> 32, 0, 0, 0, 1000, 4711) + attrs
    return NLMSG.pack(NLMSG.size + len(body), inet_diag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def done():
    return NLMSG.pack(NLMSG.size + 4, inet_diag.NLMSG_DONE, 2, 1, 0) + b"\0" * 4


def test_request_layout():
    req = inet_diag.request(socket.AF_INET6, inet_diag.FLOW_STATES, map_fds=(7,), seq=9)
    length, kind, flags, seq, _ = NLMSG.unpack_from(req)
    assert (length, kind, seq) == (len(req), inet_diag.SOCK_DIAG_BY_FAMILY, 9)
    assert flags & inet_diag.NLM_F_REQUEST and flags & inet_diag.NLM_F_ROOT
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req, NLMSG.size)
    assert (family, proto, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << 1, inet_diag.FLOW_STATES)
    assert req[NLMSG.size + 48:NLMSG.size + 56] == b"\xff" * 8  # INET_DIAG_NOCOOKIE
    _attr_len, attr_kind = struct.unpack_from("=HH", req, NLMSG.size + 56)
    assert attr_kind == inet_diag.INET_DIAG_REQ_SK_BPF_STORAGES | inet_diag.NLA_F_NESTED
    assert struct.unpack_from("=HHI", req, NLMSG.size + 60) == (8, inet_diag.SK_DIAG_BPF_STORAGE_REQ_MAP_FD, 7)


def test_decode_a_socket_with_info_cgroup_and_storage():
    storage = struct.pack("<QIIBBBB4xI4x", 4242, 3, 0, 2, 1, 1, 0, 9)  # struct sk_state (bpf/tcpflow.c)
    nested = nla(inet_diag.SK_DIAG_BPF_STORAGE | inet_diag.NLA_F_NESTED,
                 nla(2, struct.pack("=I", 17)) + nla(inet_diag.SK_DIAG_BPF_STORAGE_MAP_VALUE, storage))
    attrs = (nla(inet_diag.INET_DIAG_SHUTDOWN, b"\0") + nla(inet_diag.INET_DIAG_INFO, tcp_info())
             + nla(inet_diag.INET_DIAG_CGROUP_ID, struct.pack("=Q", 99))
             + nla(inet_diag.INET_DIAG_SK_BPF_STORAGES | inet_diag.NLA_F_NESTED, nested))
    socks, complete = inet_diag.decode(diag_msg(attrs=attrs) + done())
    assert complete
    s, = socks
    assert (s.cookie, s.family, s.state, s.src, s.sport, s.dst, s.dport) == (
        (1 << 33) + 5, socket.AF_INET, ESTABLISHED, "10.0.0.1", 40000, "10.0.0.2", 2049)
    assert (s.uid, s.inode, s.bytes_acked, s.bytes_received, s.total_retrans, s.segs_out, s.rtt_us, s.cgroup) == (
        1000, 4711, 1001, 333, 3, 12, 57, 99)
    assert s.storage == SkState(4242, 3, 2, 1, True)


def test_decode_ipv6_and_a_short_tcp_info():
    socks, complete = inet_diag.decode(diag_msg(socket.AF_INET6, "fd00::1", "fd00::2",
                                                attrs=nla(inet_diag.INET_DIAG_INFO, tcp_info(length=104))))
    assert not complete  # no NLMSG_DONE in this buffer: the dump goes on
    s, = socks
    assert (s.src, s.dst, s.rtt_us, s.total_retrans) == ("fd00::1", "fd00::2", 57, 3)
    assert s.bytes_acked is None and s.segs_out is None and s.storage is None


def test_decode_error_message_raises():
    err = NLMSG.pack(NLMSG.size + 4, inet_diag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    with pytest.raises(inet_diag.DumpError):
        inet_diag.decode(err)


def test_truncated_buffers_are_ignored():
    msg = diag_msg(attrs=nla(inet_diag.INET_DIAG_INFO, tcp_info()))
    assert inet_diag.decode(msg[:40]) == ([], False)


def test_real_dump_matches_pyroute2():
    """The same sockets, decoded by this module and by pyroute2 (the reference), field by field."""
    from pyroute2 import DiagSocket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    pairs = []
    for i in range(20):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        c.sendall(b"x" * (100 * i))
        got = 0
        while got < 100 * i:
            got += len(s.recv(65536))
        pairs.append((c, s))
    try:
        ds = inet_diag.DiagSocket()
        mine = {s.cookie: s for s in ds.dump(socket.AF_INET, inet_diag.FLOW_STATES)}
        ds.close()
        ref = DiagSocket()
        ref.bind()
        theirs = ref.get_sock_stats(family=socket.AF_INET, states=inet_diag.FLOW_STATES, extensions=0xff)
        ref.close()
        ours = [m for m in theirs if m["idiag_sport"] == port or m["idiag_dport"] == port]
        assert len(ours) >= 40
        for m in ours:
            ti = m.get_attr("INET_DIAG_INFO")
            s = mine[m["idiag_cookie"]]
            assert (s.src, s.sport, s.dst, s.dport, s.inode, s.state) == (
                m["idiag_src"], m["idiag_sport"], m["idiag_dst"], m["idiag_dport"], m["idiag_inode"],
                m["idiag_state"])
            assert (s.bytes_acked, s.bytes_received, s.total_retrans, s.segs_out) == (
                ti["tcpi_bytes_acked"], ti["tcpi_bytes_received"], ti["tcpi_total_retrans"], ti["tcpi_segs_out"])
            assert s.cgroup == m.get_attr("INET_DIAG_CGROUP_ID")
    finally:
        for c, s in pairs:
            c.close()
            s.close()
        srv.close()


def test_top_view_lists_the_heaviest_flows(tmp_path):
    """`python -m agent.sources.netflow.top`: the debug view of individual flows, classified by the config's policy."""
    import subprocess
    import sys

    from tests.support import ROOT

    cfg = tmp_path / "agent.yaml"
    cfg.write_text("netflow:\n  classes:\n    t_top: ['127.77.15.0/24']\n")
    srv = socket.socket()
    srv.bind(("127.77.15.1", 0))
    srv.listen()
    c = socket.socket()
    c.bind(("127.77.15.2", 0))
    c.connect(srv.getsockname())
    s, _ = srv.accept()
    client = f"127.77.15.2:{c.getsockname()[1]}"
    try:
        c.sendall(b"x" * 300_000)
        got = 0
        while got < 300_000:
            got += len(s.recv(1 << 16))
        p = subprocess.run([sys.executable, "-m", "agent.sources.netflow.top", "-c", str(cfg), "--total", "-n", "1000"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    finally:
        c.close()
        s.close()
        srv.close()
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[2].split()[:3] == ["PEER_CLASS", "DIR", "STATE"]
    by_dir = {r[1]: r for r in (line.split() for line in p.stdout.splitlines()) if r[:1] == ["t_top"]}
    assert by_dir["egress"][2:4] == ["ESTAB", client] and by_dir["ingress"][4] == client
    assert by_dir["egress"][5] == "293.0K" and by_dir["ingress"][6] == "293.0K"  # 300,000 payload bytes
