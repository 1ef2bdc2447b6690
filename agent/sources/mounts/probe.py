"""One mount point's probe, in a thread that can be abandoned: a hung NFS stat is the canonical D-state hang
and must cost a finding, never the agent. At most one probe per mount point is outstanding: while one is stuck
no second starts (a second would hang as well and pile up threads)."""
from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass


@dataclass
class ProbeResult:
    ok: bool
    error: str | None = None  # why not ok (errno text), None when ok
    bsize: int | None = None
    blocks: int | None = None
    bavail: int | None = None
    files: int | None = None
    favail: int | None = None
    writable: bool | None = None  # None: not probed
    seconds: float | None = None
    hung: bool = False
    stuck_seconds: float | None = None


def _probe(path: str, write: bool) -> ProbeResult:
    start = time.monotonic()
    try:
        os.stat(path)
        st = os.statvfs(path)
        with os.scandir(path) as it:  # a small read: one directory entry
            next(it, None)
    except OSError as e:
        return ProbeResult(False, f"{errno.errorcode.get(e.errno, 'error')}: {e.strerror or e}")
    res = ProbeResult(True, None, st.f_frsize or st.f_bsize, st.f_blocks, st.f_bavail, st.f_files, st.f_favail)
    if write:
        name = os.path.join(path, f".vigil-write-probe-{os.getpid()}")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"vigil\n")
            finally:
                os.close(fd)
                os.unlink(name)
            res.writable = True
        except OSError as e:
            res.writable = False
            res.error = f"write: {errno.errorcode.get(e.errno, 'error')}: {e.strerror or e}"
    res.seconds = time.monotonic() - start
    return res


class Prober:
    def __init__(self) -> None:
        self._stuck: dict[str, tuple[threading.Thread, float]] = {}

    def probe(self, path: str, timeout: float, write: bool = False) -> ProbeResult:
        stuck = self._stuck.get(path)
        if stuck is not None:
            thread, since = stuck
            if thread.is_alive():
                return ProbeResult(False, "an earlier probe is still stuck", hung=True,
                                   stuck_seconds=time.monotonic() - since)
            del self._stuck[path]
        box: dict[str, ProbeResult] = {}
        start = time.monotonic()
        t = threading.Thread(target=lambda: box.setdefault("r", _probe(path, write)), name="mount-probe",
                             daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            self._stuck[path] = (t, start)
            return ProbeResult(False, f"no answer within {timeout:g}s", hung=True,
                               stuck_seconds=time.monotonic() - start)
        return box["r"]

    def stuck(self) -> list[str]:
        return sorted(p for p, (t, _) in self._stuck.items() if t.is_alive())
