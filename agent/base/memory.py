"""The agent's own memory: fewer glibc malloc arenas.

glibc gives each thread that allocates while another holds the main arena a malloc arena of its own, up to 8 per
core. The agent's collector loops, their abandonable read threads, the HTTP threads and the stream each touch a
few of them, and the memory freed in one arena is not reused by another: measured on the 64-GPU / 32-port /
500-container fixture node, about 9 MB of the agent's RSS was arenas' free space (issue 15; README, "The agent as
hardware grows"). Two arenas keep that down; the agent's threads mostly wait on I/O or the GIL, so they do not
contend for them. What MALLOC_ARENA_MAX in the environment says wins: an operator's setting is kept.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on (call before the threads start). False where it does not apply
    (not glibc, or MALLOC_ARENA_MAX set): nothing changes then, which costs memory, never correctness."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(getattr(libc, "mallopt")(M_ARENA_MAX, arenas))  # musl has no mallopt: AttributeError
    except (OSError, AttributeError) as e:
        log.debug("mallopt(M_ARENA_MAX) not available: %s", e)
        return False
