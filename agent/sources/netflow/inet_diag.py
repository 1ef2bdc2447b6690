"""Live TCP sockets and their tcp_info over NETLINK_SOCK_DIAG (inet_diag), in every network namespace.

A small encoder and a pure decoder of the messages, with the standard library only: pyroute2's
`DiagSocket().get_sock_stats(..., extensions=0xff)` returns the same fields (tests/netflow cross-check the two
on real dumps) but decodes every attribute of every socket in Python, about 125 us per socket here, and
cannot ask for a socket's BPF storage (INET_DIAG_REQ_SK_BPF_STORAGES), which tells which sockets the kernel
program tracks and in which direction they were opened.
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .decode import ESTABLISHED, LISTEN, SK_STATE_SIZE, LiveKey, SkState, sk_state

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_ROOT, NLM_F_MATCH = 0x1, 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 1 << 15

INET_DIAG_INFO = 2
INET_DIAG_SHUTDOWN = 8
INET_DIAG_SK_BPF_STORAGES = 20
INET_DIAG_CGROUP_ID = 21
INET_DIAG_REQ_SK_BPF_STORAGES = 2
SK_DIAG_BPF_STORAGE_REQ_MAP_FD = 1
SK_DIAG_BPF_STORAGE = 1
SK_DIAG_BPF_STORAGE_MAP_VALUE = 3

# Sockets whose tcp_info carries payload counters: established and closing ones (not LISTEN, SYN_*,
# TIME_WAIT or NEW_SYN_RECV, which are not full sockets or carry nothing yet).
FLOW_STATE_SET = frozenset((ESTABLISHED, 4, 5, 8, 9, 11))
FLOW_STATES = sum(1 << s for s in FLOW_STATE_SET)
LISTEN_STATES = 1 << LISTEN

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_REQ = struct.Struct("=BBBBI HH16s16sI8s")
_MSG = struct.Struct("=BBBB HH16s16sIII IIIII")  # inet_diag_msg: 72 bytes
# tcp_info offsets (include/uapi/linux/tcp.h); older kernels send a shorter struct.
_TI_STATE, _TI_RTT, _TI_TOTAL_RETRANS, _TI_BYTES_ACKED, _TI_BYTES_RECEIVED, _TI_SEGS_OUT = 0, 68, 100, 120, 128, 136


class LiveSocket(NamedTuple):
    cookie: int
    family: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    inode: int
    uid: int
    bytes_acked: int | None
    bytes_received: int | None
    total_retrans: int
    segs_out: int | None
    rtt_us: int
    cgroup: int  # 0 when the kernel does not say
    storage: SkState | None  # the probe's socket storage, when asked for and present


def request(family: int, states: int, map_fds: tuple[int, ...] = (), seq: int = 1,
            one: LiveKey | None = None) -> bytes:
    """A SOCK_DIAG_BY_FAMILY request for TCP sockets with tcp_info and the contents of the given sk_storage
    maps: a dump of the sockets in `states` (a bit mask), or the lookup of `one` socket (its 4-tuple and
    cookie: an O(1) hash lookup in the kernel, where a dump walks every socket of every namespace)."""
    if one is None:
        sock_id = (0, 0, b"\0" * 16, b"\0" * 16, 0, b"\xff" * 8)  # INET_DIAG_NOCOOKIE
        flags = NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH
    else:
        sock_id = (socket.htons(one.sport), socket.htons(one.dport), socket.inet_pton(one.family, one.src),
                   socket.inet_pton(one.family, one.dst), 0,
                   struct.pack("=II", one.cookie & 0xFFFFFFFF, one.cookie >> 32))
        flags = NLM_F_REQUEST
    body = _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, states, *sock_id)
    if map_fds:
        inner = b"".join(_attr(SK_DIAG_BPF_STORAGE_REQ_MAP_FD, struct.pack("=I", fd)) for fd in map_fds)
        body += _attr(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED, inner)
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def _attr(kind: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n % 4)


def _attrs(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each netlink attribute in buf[start:end]."""
    while start + _NLA.size <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < _NLA.size or start + length > end:
            return
        yield kind & 0x3FFF, start + _NLA.size, start + length
        start += (length + 3) & ~3


class DumpError(OSError):
    pass


def decode(buf: bytes | memoryview, errors: list[int] | None = None) -> tuple[list[LiveSocket], bool]:
    """The sockets in one receive buffer, and whether a dump is complete (NLMSG_DONE seen). An NLMSG_ERROR
    raises DumpError, or, given an `errors` list, appends its errno there (a lookup of a socket that closed:
    ENOENT) and counts as one answer."""
    out: list[LiveSocket] = []
    off, end = 0, len(buf)
    while off + _NLMSG.size <= end:
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if length < _NLMSG.size or off + length > end:
            break
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            if length < _NLMSG.size + 4:  # too short to hold its errno: a malformed message, skipped
                off += (length + 3) & ~3
                continue
            err = -struct.unpack_from("=i", buf, off + _NLMSG.size)[0]
            if err and errors is None:
                raise DumpError(err, os.strerror(err))
            if errors is not None:
                errors.append(err)
        elif kind == SOCK_DIAG_BY_FAMILY:
            s = _socket(buf, off + _NLMSG.size, off + length)
            if s is not None:
                out.append(s)
        off += (length + 3) & ~3
    return out, False


def _socket(buf: bytes | memoryview, start: int, end: int) -> LiveSocket | None:
    """One inet_diag_msg; None when it is too short or of a family that is not IP (costs that socket)."""
    if start + _MSG.size > end or buf[start] not in (socket.AF_INET, socket.AF_INET6):
        return None
    (family, state, _timer, _retrans, sport, dport, src, dst, _if, ck0, ck1, _expires, _rq, _wq, uid,
     inode) = _MSG.unpack_from(buf, start)
    acked = received = segs = None
    retrans = rtt = cgroup = 0
    storage = None
    for kind, a, b in _attrs(buf, start + _MSG.size, end):
        if kind == INET_DIAG_INFO:
            n = b - a
            if n >= _TI_TOTAL_RETRANS + 4:
                rtt, = struct.unpack_from("=I", buf, a + _TI_RTT)
                retrans, = struct.unpack_from("=I", buf, a + _TI_TOTAL_RETRANS)
            if n >= _TI_BYTES_RECEIVED + 8:
                acked, received = struct.unpack_from("=QQ", buf, a + _TI_BYTES_ACKED)
            if n >= _TI_SEGS_OUT + 4:
                segs, = struct.unpack_from("=I", buf, a + _TI_SEGS_OUT)
        elif kind == INET_DIAG_CGROUP_ID and b - a >= 8:
            cgroup, = struct.unpack_from("=Q", buf, a)
        elif kind == INET_DIAG_SK_BPF_STORAGES:
            for k2, a2, b2 in _attrs(buf, a, b):
                if k2 != SK_DIAG_BPF_STORAGE:
                    continue
                for k3, a3, b3 in _attrs(buf, a2, b2):
                    if k3 == SK_DIAG_BPF_STORAGE_MAP_VALUE and b3 - a3 >= SK_STATE_SIZE:
                        storage = sk_state(bytes(buf[a3:b3]))
    if family == socket.AF_INET:
        s_addr, d_addr = socket.inet_ntop(family, bytes(src[:4])), socket.inet_ntop(family, bytes(dst[:4]))
    else:
        s_addr, d_addr = socket.inet_ntop(family, bytes(src)), socket.inet_ntop(family, bytes(dst))
    return LiveSocket(ck0 | (ck1 << 32), family, state, s_addr, socket.ntohs(sport), d_addr, socket.ntohs(dport),
                      inode, uid, acked, received, retrans, segs, rtt, cgroup, storage)


SO_NETNS_COOKIE = 71
LOOKUP_BATCH = 256  # lookups per send: their answers (about 300 bytes each) fit the receive buffer


class DiagSocket:
    """One NETLINK_SOCK_DIAG socket, bound to the network namespace it was created in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(5.0)  # an answer that never comes fails the read instead of hanging the probe
        self.sock.bind((0, 0))
        self._seq = 0
        try:  # the namespace's cookie, as bpf_get_netns_cookie() sees it (kernel 5.14+)
            self.netns_cookie: int | None = struct.unpack("=Q", self.sock.getsockopt(socket.SOL_SOCKET,
                                                                                    SO_NETNS_COOKIE, 8))[0]
        except OSError:
            self.netns_cookie = None

    def lookup(self, keys: list[LiveKey], map_fds: tuple[int, ...] = ()) -> list[LiveSocket]:
        """The sockets of `keys` that are still there, one exact lookup each, sent in batches."""
        out: list[LiveSocket] = []
        for i in range(0, len(keys), LOOKUP_BATCH):
            batch = keys[i:i + LOOKUP_BATCH]
            msgs = []
            for k in batch:
                self._seq += 1
                msgs.append(request(k.family, 0xFFFFFFFF, map_fds, self._seq, one=k))
            self.sock.send(b"".join(msgs))
            answers = 0
            while answers < len(batch):
                errors: list[int] = []
                socks, _ = decode(self.sock.recv(1 << 20), errors)
                out.extend(socks)
                answers += len(socks) + len(errors)
        return out

    def dump(self, family: int, states: int, map_fds: tuple[int, ...] = ()) -> list[LiveSocket]:
        self._seq += 1
        self.sock.send(request(family, states, map_fds, self._seq))
        out: list[LiveSocket] = []
        while True:
            buf = self.sock.recv(1 << 17)
            if not buf:
                return out
            socks, done = decode(buf)
            out.extend(socks)
            if done:
                return out

    def close(self) -> None:
        self.sock.close()


class Namespaces:
    """A DiagSocket per network namespace: this process's own, every one a process lives in (/proc/*/ns/net),
    and the named ones (/run/netns/*). Sockets of namespaces that went away are closed on refresh()."""

    def __init__(self, procfs: Path = Path("/proc"), named: Path = Path("/run/netns"), all_namespaces: bool = True):
        self.procfs, self.named, self.all = procfs, named, all_namespaces
        self.own = os.stat(procfs / "self" / "ns" / "net").st_ino
        self.sockets: dict[int, DiagSocket] = {self.own: DiagSocket()}  # by namespace inode
        self.by_cookie: dict[int, DiagSocket] = {}  # by namespace cookie
        self._index()

    def _index(self) -> None:
        self.by_cookie = {ds.netns_cookie: ds for ds in self.sockets.values() if ds.netns_cookie is not None}

    def refresh(self) -> None:
        if not self.all:
            return
        found: dict[int, Path] = {}
        for path in self._candidates():
            try:
                ino = os.stat(path).st_ino
            except OSError:
                continue
            found.setdefault(ino, path)
        for ino in list(self.sockets):
            if ino != self.own and ino not in found:
                self.sockets.pop(ino).close()
        for ino, path in found.items():
            if ino not in self.sockets:
                sock = _socket_in(path)
                if sock is not None:
                    self.sockets[ino] = sock
        self._index()

    def _candidates(self) -> Iterator[Path]:
        try:
            for entry in os.scandir(self.procfs):
                if entry.name.isdigit():
                    yield Path(entry.path) / "ns" / "net"
        except OSError:
            pass
        try:
            for entry in os.scandir(self.named):
                yield Path(entry.path)
        except OSError:
            pass

    def dump(self, states: int, map_fds: tuple[int, ...] = ()) -> Iterator[tuple[int, LiveSocket]]:
        """(namespace inode, socket) for every TCP socket in `states`, IPv4 and IPv6, in every namespace."""
        for ino, ds in list(self.sockets.items()):
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    socks = ds.dump(family, states, map_fds)
                except OSError:
                    if ino == self.own:
                        raise
                    self.sockets.pop(ino).close()  # the namespace went away under us
                    self._index()
                    break
                for s in socks:
                    yield ino, s

    def close(self) -> None:
        for ds in self.sockets.values():
            ds.close()
        self.sockets.clear()


CLONE_NEWNET = 0x40000000


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for this thread (os.setns arrives in Python 3.12)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _socket_in(path: Path) -> DiagSocket | None:
    """A DiagSocket created inside the network namespace at `path` (this thread enters it and comes back)."""
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(target)
        try:
            return DiagSocket()
        finally:
            setns(home)
    except OSError:
        return None
    finally:
        os.close(target)
        os.close(home)
