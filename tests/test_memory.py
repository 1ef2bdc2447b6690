"""agent/base/memory.py: the serving agent caps glibc's malloc arenas, unless the operator set MALLOC_ARENA_MAX.
Each case runs in a fresh interpreter (arenas are per process), counting the heaps glibc's malloc_info reports
after threads that allocate at the same time."""
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

PROGRAM = r"""
import ctypes, os, sys, threading
from agent.base.memory import limit_malloc_arenas
applied = limit_malloc_arenas() if sys.argv[1] == "limit" else None
libc = ctypes.CDLL(None)
go = threading.Barrier(8)
def work():
    go.wait()
    keep = [bytearray(4096) for _ in range(2000)]  # outside pymalloc: from malloc, in this thread's arena
    go.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
print(applied, buf.value.decode().count("<heap nr="))
"""


def heaps(mode: str, **env: str) -> tuple[str, int]:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    p = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**base, "PYTHONPATH": str(ROOT), **env})
    assert p.returncode == 0, p.stderr
    applied, n = p.stdout.split()
    return applied, int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_the_agent_caps_malloc_arenas_and_keeps_an_operators_setting():
    applied, n = heaps("limit")
    assert applied == "True" and n <= 2
    _, unlimited = heaps("none")
    assert unlimited > 2  # without the cap, threads allocating together get arenas of their own
    applied, n = heaps("limit", MALLOC_ARENA_MAX="4")
    assert applied == "False" and 2 < n <= 4  # the operator's 4, not our 2
