"""The probe process: `python -m agent.sources.netflow.probe`, started by the agent (client.py), never imported by it.

It loads bpf/tcpflow.c with BCC, attaches the sock_ops program (through a BPF link on the cgroup v2 root, so the
kernel detaches it when this process dies, however it dies; or the tracepoint where sock_ops cannot run), and
answers requests on a pipe, one JSON object per line:
  stdin, first line   the configuration: policy, agg/record/live_entries, all_namespaces, bpf (false: no BCC),
                      and for tests of the fallbacks sock_ops (false: tracepoint) and dump (true: as a kernel
                      without namespace cookies)
  stdout             {"ready": true, "mode": ..., "programs": [...], "notes": [...]} or {"error": "..."}
  stdin "read"       -> one reading: live sockets (inet_diag, every network namespace), drained close
                        records, the in-kernel aggregates, per-class stats, counters and map fill
  stdin "stop" / EOF -> exit
Modes: "bpf" (sock_ops + inet_diag), "tracepoint" (no cgroup v2 or sock_ops: sock:inet_sock_set_state for opens,
bytes of live sockets only), "inet_diag" (no BCC: live sockets only).
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.base.errors import error_text
from . import decode, inet_diag
from .policy import PeerPolicy

# bpf/ beside the agent package (a checkout, or an image that copies it there); VIGIL_BPF_DIR overrides.
BPF_SOURCE = Path(os.environ.get("VIGIL_BPF_DIR") or Path(__file__).resolve().parents[3] / "bpf") / \
    "tcpflow.c"
BPF_CGROUP_SOCK_OPS = 3  # enum bpf_attach_type
GEN_SETTLE_SECONDS = 0.002  # after marking a dump: a close that read the old mark has left the hash tables


def cgroup2_mount(mounts: Path = Path("/proc/mounts")) -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified in hybrid mode)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return parts[1].replace("\\040", " ")
    return None


class CgroupIndex:
    """cgroup v2 id (the directory's inode number) -> path relative to the hierarchy's root."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.paths: dict[int, str] = {}
        self.gone: set[int] = set()  # ids a scan did not find (removed cgroups): no new scan for them

    def scan(self) -> set[int]:
        self.paths = {}
        if self.root:
            for top, dirs, _files in os.walk(self.root):
                try:
                    ino = os.stat(top).st_ino
                except OSError:
                    continue
                rel = "/" + os.path.relpath(top, self.root) if top != self.root else "/"
                self.paths[ino] = rel
        return set(self.paths)

    def resolve(self, ids: set[int]) -> dict[str, str]:
        """{id: path} of `ids`, scanning the hierarchy again (once) if one is new."""
        new = {i for i in ids if i and i not in self.paths and i not in self.gone}
        if new:
            self.scan()
            self.gone = {i for i in self.gone | new if i not in self.paths} if len(self.gone) < 65536 else set()
        return {str(i): self.paths[i] for i in ids if i in self.paths}

    def path(self, cgroup_id: int) -> str | None:
        return self.resolve({cgroup_id}).get(str(cgroup_id))


class Probe:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.policy = PeerPolicy.from_json(config["policy"])
        self.mode = "inet_diag"
        self.notes: list[str] = []
        self.programs: list[str] = []
        self.bpf: Any = None
        self.link_fd: int | None = None
        self.storage_fd: int | None = None
        self.live_slots: mmap.mmap | None = None  # the kernel's `live` array, mapped read-only
        self.gen = 0
        self.epoch = f"{os.getpid()}-{time.time_ns()}"
        self.cgroup_root = config.get("cgroup_root") or cgroup2_mount()
        self.cgroups = CgroupIndex(self.cgroup_root)
        self.namespaces = inet_diag.Namespaces(all_namespaces=config.get("all_namespaces", True))
        self._classes: dict[tuple[str, int, int], int] = {}
        self.lookups = False  # read live sockets by lookup from `live` (else: dump every namespace)
        self.untracked: dict[int, tuple[decode.LiveKey, bool]] = {}  # open before the probe: (key, passive)

    # -- start ----------------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        if self.config.get("bpf", True):
            try:
                self._load()
            except ImportError as e:
                self.notes.append(f"BCC unavailable ({e}): live sockets only")
        else:
            self.notes.append("BPF disabled by configuration: live sockets only")
        self.cgroups.scan()
        self.namespaces.refresh()
        own = self.namespaces.sockets[self.namespaces.own]
        self.lookups = self.link_fd is not None and own.netns_cookie is not None and not self.config.get("dump")
        if self.link_fd is not None and not self.lookups:
            self.notes.append("no network namespace cookies (kernel < 5.14): every read dumps all sockets")
            table = self.bpf["dumping"]
            table[table.Key(0)] = ctypes.c_uint(1)
        if self.lookups:
            self._adopt_existing()
        return {"ready": True, "mode": self.mode, "programs": self.programs, "notes": self.notes,
                "epoch": self.epoch, "cgroup_root": self.cgroup_root}

    def _load(self) -> None:
        from bcc import BPF  # the only import of BCC in Vigil

        if not BPF_SOURCE.is_file():
            raise FileNotFoundError(f"{BPF_SOURCE} is missing (set VIGIL_BPF_DIR to the directory holding it)")

        cflags = [f"-DAGG_ENTRIES={int(self.config.get('agg_entries', 4096))}",
                  f"-DRECORD_ENTRIES={int(self.config.get('record_entries', 16384))}",
                  f"-DLIVE_ENTRIES={int(self.config.get('live_entries', 65536))}"]
        bpf = None
        if self.cgroup_root is None:
            self.notes.append("no cgroup v2 mount: no sock_ops, bytes of closed connections are not counted")
        elif not self.config.get("sock_ops", True):
            self.notes.append("sock_ops disabled by configuration: bytes of closed connections are not counted")
        else:
            bpf = self._load_sock_ops(BPF, cflags)
        if bpf is None:  # opens and failed connects from the tracepoint, bytes of live sockets only
            if BPF.tracepoint_exists("sock", "inet_sock_set_state"):
                bpf = BPF(src_file=str(BPF_SOURCE), cflags=cflags + ["-DNO_SOCK_OPS", "-DTRACEPOINT_FALLBACK"])
                self.programs.append("tracepoint/sock/inet_sock_set_state")
            else:
                self.notes.append("tracepoint sock:inet_sock_set_state missing too (kernel < 4.16 or tracefs "
                                  "not mounted): no connection counts")
                return
        self.bpf = bpf
        self.mode = "bpf" if self.link_fd is not None else "tracepoint"
        load_policy(bpf, self.policy)

    def _load_sock_ops(self, BPF: Any, cflags: list[str]) -> Any:
        """Compile, load and attach the sock_ops program; None (with a note) when this kernel refuses it."""
        why = ""
        for extra in ([], ["-DNO_CURRENT_CGROUP"]):
            bpf = BPF(src_file=str(BPF_SOURCE), cflags=cflags + extra)
            try:
                fn = bpf.load_func("tcpflow_ops", BPF.SOCK_OPS)
            except Exception as e:  # noqa: BLE001 - BCC raises Exception on a verifier refusal: retry without
                # the cgroup helper, then give up
                bpf.cleanup()
                why = str(e)
                continue
            err = self._link(fn.fd)
            if err:
                bpf.cleanup()
                why = f"attach to {self.cgroup_root}: {err}"
                break
            if extra:
                self.notes.append("sock_ops cannot read the current cgroup here: pods are not attributed")
            self.programs.append(f"sock_ops {self.cgroup_root}")
            self.storage_fd = _map_fd(bpf, "sk_state")
            return bpf
        self.notes.append(f"sock_ops unavailable ({why}): bytes of closed connections are not counted")
        return None

    def _link(self, prog_fd: int) -> str | None:
        try:
            self.link_fd = link_sock_ops(prog_fd, self.cgroup_root)
        except LinkError as e:
            return str(e)
        return None

    # -- read -----------------------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """One reading (see the module docstring); the live sockets are read between two marks of `gen`."""
        t0 = time.monotonic()
        if self.link_fd is not None:
            self._set_gen(self.gen + 1)  # odd: a socket that closes from here on reports its own totals
            time.sleep(GEN_SETTLE_SECONDS)
        flows, listed = self._lookup_live() if self.lookups else self._dump_all()
        if self.link_fd is not None:
            self._set_gen(self.gen + 1)  # even again
        live_read = time.monotonic() - t0
        out: dict[str, Any] = {"epoch": self.epoch, "mode": self.mode, "programs": len(self.programs),
                               "names": list(self.policy.names), "live_read_seconds": round(live_read, 6)}
        cgroup_ids: set[int] = set()
        sockets = []
        for ns, s, meta in flows:
            row = self._socket_row(ns, s, meta)
            if row is not None:
                sockets.append(row)
                cgroup_ids.add(row[2])
        out["sockets"] = sockets
        if self.bpf is not None:
            out.update(self._maps(cgroup_ids))
            if self.lookups:
                out["maps"]["live"] = [listed, int(self.config.get("live_entries", 65536))]
        out["cgroups"] = self.cgroups.resolve(cgroup_ids)
        out["read_seconds"] = round(time.monotonic() - t0, 6)
        return out

    def _set_gen(self, value: int) -> None:
        self.gen = value
        table = self.bpf["gen"]
        table[table.Key(0)] = ctypes.c_ulonglong(value)

    def _dump_all(self) -> tuple[list[tuple[int, inet_diag.LiveSocket, bool]], int]:
        """Every socket of every namespace (no list of live sockets from the kernel: no sock_ops, or a kernel
        without namespace cookies). Costs a walk of the kernel's whole TCP hash table per namespace."""
        self.namespaces.refresh()
        fds = (self.storage_fd,) if self.storage_fd is not None else ()
        listening: dict[int, set[int]] = {}
        for ns, s in self.namespaces.dump(inet_diag.LISTEN_STATES):
            listening.setdefault(ns, set()).add(s.sport)
        return [(ns, s, s.sport in listening.get(ns, ())) for ns, s in
                self.namespaces.dump(inet_diag.FLOW_STATES, fds)], 0  # meta: the socket listens, so accepted

    def _adopt_existing(self) -> None:
        """Sockets open before this probe have no storage and are not in `live`: find them once with a dump,
        then look them up on every read until they close (their last bytes before closing are lost)."""
        for ns, s, passive in self._dump_all()[0]:
            ds = self.namespaces.sockets.get(ns)
            if ds is None or ds.netns_cookie is None or (s.storage is not None and s.storage.tracked):
                continue
            self.untracked[s.cookie] = (decode.LiveKey(s.cookie, ds.netns_cookie, s.family, s.src, s.sport, s.dst,
                                                       s.dport), passive)

    def _lookup_live(self) -> tuple[list[tuple[int, inet_diag.LiveSocket, Any]], int]:
        """The sockets in `live` and the adopted ones, one inet_diag lookup each in their namespace; meta: the
        socket's key from `live`, or whether an adopted socket was accepted."""
        by_ns: dict[int, list[decode.LiveKey]] = {}
        by_cookie: dict[int, decode.LiveKey] = {}
        listed = 0
        for cookie, v in self._listed():
            key = decode.live_key(cookie, v)
            by_ns.setdefault(key.netns, []).append(key)
            by_cookie[key.cookie] = key
            listed += 1
        for key, _passive in self.untracked.values():
            by_ns.setdefault(key.netns, []).append(key)
        if any(nc not in self.namespaces.by_cookie for nc in by_ns):
            self.namespaces.refresh()  # a namespace created since the last read
        fds = (self.storage_fd,) if self.storage_fd is not None else ()
        out, found = [], set()
        for nc, keys in by_ns.items():
            ds = self.namespaces.by_cookie.get(nc)
            if ds is None:
                continue
            for s in ds.lookup(keys, fds):
                if s.state in inet_diag.FLOW_STATE_SET:
                    adopted = self.untracked.get(s.cookie)
                    out.append((nc, s, adopted[1] if adopted else by_cookie.get(s.cookie, False)))
                    found.add(s.cookie)
        for cookie in [c for c in self.untracked if c not in found]:
            del self.untracked[cookie]  # closed
        return out, listed

    def _listed(self) -> list[tuple[int, bytes]]:
        """(cookie, struct live_sock) of every occupied slot of `live`, read from the mapped array: the cookies
        first, then each occupied slot's socket and its cookie again; a slot that changed in between (freed or
        claimed again) is left for the next read, its bytes counted then or at close (a record)."""
        entries = int(self.config.get("live_entries", 65536))
        m = self.live_slots
        if m is None:
            m = self.live_slots = mmap.mmap(_map_fd(self.bpf, "live"), _page_round(entries * decode.LIVE_SLOT),
                                            flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        words = decode.LIVE_SLOT // 8
        with memoryview(m) as mv, mv.cast("Q") as q:
            cookies = q[:entries * words:words].tolist()  # the slots' first words (the page's tail is none)
        out = []
        for i, cookie in enumerate(cookies):
            if cookie == 0 or cookie == decode.LIVE_BUSY:
                continue
            off = i * decode.LIVE_SLOT
            raw = m[off + 8:off + decode.LIVE_SLOT]
            if int.from_bytes(m[off:off + 8], "little") == cookie:
                out.append((cookie, raw))
        return out

    def _socket_row(self, ns: int, s: inet_diag.LiveSocket, meta: Any) -> list | None:
        """[cookie, class, cgroup, dir, tracked, sent, received, retrans, segs_out, rtt_us, state, netns,
        family, src, sport, dst, dport, inode]; payload bytes with the SYN and FINs taken out."""
        if s.bytes_acked is None:
            return None  # kernel without tcpi_bytes_acked (< 4.1)
        st = s.storage
        tracked = isinstance(meta, decode.LiveKey) or (st is not None and st.tracked)
        if isinstance(meta, decode.LiveKey):  # listed by the kernel program (lookup mode)
            cls, dir_, cgroup = meta.cls, meta.dir, meta.cgroup or s.cgroup
        elif tracked:  # its storage, in a dump
            cls, dir_, cgroup = st.cls, st.dir, st.cgroup or s.cgroup
        else:
            key = (s.dst, s.dport, s.sport)
            cls = self._classes.get(key)
            if cls is None:
                if len(self._classes) > 65536:
                    self._classes.clear()
                cls = self._classes[key] = self.policy.classify(s.dst, s.dport, s.sport)
            # Not set up by this probe (opened before it started): a local port that listens means accepted.
            dir_ = decode.DIR_PASSIVE if meta else decode.DIR_ACTIVE
            cgroup = s.cgroup
        sent, received = decode.live_payload(s.bytes_acked, s.bytes_received or 0, s.state,
                                             dir_ == decode.DIR_ACTIVE)
        return [s.cookie, cls, cgroup, dir_, tracked, sent, received,
                s.total_retrans, s.segs_out or 0, s.rtt_us, s.state, ns, s.family, s.src, s.sport, s.dst, s.dport,
                s.inode]

    def _maps(self, cgroup_ids: set[int]) -> dict[str, Any]:
        b = self.bpf
        out: dict[str, Any] = {}
        n_classes = len(self.policy.names)
        stats = b["stats"]
        out["stats"] = [list(_flatten(decode.class_stats(bytes(stats[stats.Key(i)])))) for i in range(n_classes)]
        counters = b["counters"]
        out["counters"] = {name: sum(counters[counters.Key(i)]) for i, name in enumerate(decode.COUNTERS)}
        records = []
        if self.link_fd is not None:
            for k, v in _entries(b["records"], delete=True):
                r = decode.record(_u64(k), v)
                records.append([r.cookie, *r.totals, r.cgroup, r.srtt_us, r.cls, r.dir, r.flags, r.oldstate])
                cgroup_ids.add(r.cgroup)
        out["records"] = records
        agg_map = b["agg"]
        agg = []
        for k, v in _entries(agg_map):
            cls, cgroup = decode.agg_key(k)
            agg.append([cls, cgroup, *decode.totals(v)])
            cgroup_ids.add(cgroup)
        overflow = b["agg_overflow"]
        out["agg_overflow"] = [list(decode.totals(bytes(overflow[overflow.Key(i)]))) for i in range(n_classes)]
        caps = {"records": int(self.config.get("record_entries", 16384)),
                "agg": int(self.config.get("agg_entries", 4096))}
        out["maps"] = {"records": [len(records), caps["records"]], "agg": [len(agg), caps["agg"]]}
        if len(agg) > caps["agg"] // 2:
            self._forget_dead_cgroups(agg_map, agg)
        out["agg"] = agg  # freed slots too: their last values count, then they stop appearing
        return out

    def _forget_dead_cgroups(self, agg_map: Any, agg: list[list]) -> None:
        """Free the aggregate slots of cgroups that no longer exist (their pods are gone and so are their
        series), so that a node with many short-lived pods does not fill the map."""
        alive = self.cgroups.scan()
        for cls, cgroup, *_totals in agg:
            if cgroup and cgroup not in alive:
                key = agg_map.Key()
                key.cls, key.cgroup = cls, cgroup
                try:
                    del agg_map[key]
                except KeyError:
                    pass

    def close(self) -> None:
        self.namespaces.close()
        if self.live_slots is not None:
            self.live_slots.close()
            self.live_slots = None
        if self.link_fd is not None:
            os.close(self.link_fd)
            self.link_fd = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def _flatten(stats: decode.ClassStats) -> list[int]:
    return [*stats.opens, stats.connect_failed, *stats.closes, stats.rtt_sum_us, stats.rtt_count,
            *stats.rtt_buckets]


def _map_fd(bpf: Any, name: str) -> int | None:
    from bcc import lib

    fd = lib.bpf_table_fd(bpf.module, name.encode())
    return fd if fd >= 0 else None


class LinkError(Exception):
    """A sock_ops program could not be linked to the cgroup (no libbpf, or the kernel refused): why."""


def link_sock_ops(prog_fd: int, cgroup_root: str) -> int:
    """Attach a sock_ops program to the cgroup with a BPF link (kernel 5.7+): detached by the kernel when this
    process exits, so a probe that is killed leaves nothing behind; links coexist with other programs on the
    cgroup. Returns the link's fd."""
    try:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise LinkError(f"libbpf.so.1: {e}") from None
    cg = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libbpf.bpf_link_create(prog_fd, cg, BPF_CGROUP_SOCK_OPS, None)
    finally:
        os.close(cg)
    if fd < 0:
        raise LinkError(os.strerror(-fd if fd != -1 else ctypes.get_errno()))
    return fd


def load_policy(bpf: Any, policy: PeerPolicy) -> None:
    """The peer classes into the loaded program's maps: CIDRs into `policy_cidrs`, ports into `port_class`."""
    lpm, ports = policy.kernel_entries()
    cidrs = bpf["policy_cidrs"]
    for prefixlen, addr, cid in lpm:
        key = cidrs.Key()
        key.prefixlen = prefixlen
        for i, b in enumerate(addr):
            key.addr[i] = b
        cidrs[key] = ctypes.c_ubyte(cid)
    port_map = bpf["port_class"]
    for w, v in port_words(ports).items():
        port_map[port_map.Key(w)] = ctypes.c_ulonglong(v)


def port_words(ports: list[tuple[int, int]]) -> dict[int, int]:
    """bpf/tcpflow.c's `port_class` entries: class + 1 per port, eight ports a 64-bit word."""
    words: dict[int, int] = {}
    for port, cid in ports:
        words[port >> 3] = words.get(port >> 3, 0) | (cid + 1) << (8 * (port & 7))
    return words


def _page_round(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


def _u64(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _entries(table: Any, delete: bool = False, chunk: int = 1024) -> list[tuple[bytes, bytes]]:
    """(key bytes, value bytes) of every entry of a hash map, with batch operations (kernel 5.6+) through
    buffers of `chunk` entries (BCC's own batch helpers allocate max_entries each call); `delete` drains it."""
    from bcc import lib

    fn = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
    keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
    ksize, vsize = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
    token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    out: list[tuple[bytes, bytes]] = []
    first = True
    while True:
        count.value = chunk
        rc = fn(table.map_fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                ctypes.byref(keys), ctypes.byref(values), ctypes.byref(count))
        err = ctypes.get_errno()
        n = count.value
        kb = ctypes.string_at(ctypes.addressof(keys), n * ksize)
        vb = ctypes.string_at(ctypes.addressof(values), n * vsize)
        out.extend((kb[i * ksize:(i + 1) * ksize], vb[i * vsize:(i + 1) * vsize]) for i in range(n))
        if rc != 0:
            if err == errno.ENOENT:
                return out
            if first and err in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                return _entries_one_by_one(table, delete)
            raise OSError(err, os.strerror(err))
        token_in.value, first = token_out.value, False


def _entries_one_by_one(table: Any, delete: bool) -> list[tuple[bytes, bytes]]:
    out = [(bytes(k), bytes(v)) for k, v in table.items()]
    if delete:
        for raw, _v in out:
            try:
                del table[table.Key.from_buffer_copy(raw)]
            except KeyError:
                pass
    return out


def main() -> int:
    # The pipe protocol owns the original stdout; anything else written to fd 1 (BCC, libbpf) goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    # The agent going away closes our stdin: the loop below ends and the link fd closes with the process.
    # (Not PR_SET_PDEATHSIG: it follows the thread that started us, and the agent reads from short threads.)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def send(doc: dict) -> None:
        proto.write(json.dumps(doc, separators=(",", ":")) + "\n")

    line = sys.stdin.readline()
    if not line:
        return 0
    try:
        probe = Probe(json.loads(line))
        send(probe.start())
    except Exception as e:  # noqa: BLE001 - whatever stops the start is the agent's to report
        send({"error": error_text(e)})
        return 1
    try:
        for line in sys.stdin:
            op = line.strip()
            if op == "read":
                try:
                    send(probe.read())
                except Exception as e:  # noqa: BLE001 - one failed read is reported, the next may work
                    send({"error": error_text(e)})
            elif op == "stop":
                break
    finally:
        probe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
