"""Sysctl I/O under a procfs root: <procfs>/sys/<key with dots as slashes>. The live host in production
(/proc), a temporary tree in tests, a network namespace when the calling thread has joined one (/proc/sys/net
follows the caller's namespace)."""
from __future__ import annotations

import os
from pathlib import Path

from .profile import key_parts


def key_path(procfs: Path, key: str) -> Path:
    return procfs.joinpath("sys", *key_parts(key))


def read_text(procfs: Path, key: str) -> str:
    """Raises OSError (ENOENT: the key does not exist on this kernel; EACCES/EPERM: write-only key)."""
    with open(key_path(procfs, key), encoding="ascii", errors="replace") as f:
        return f.read()


def write_text(procfs: Path, key: str, text: str) -> None:
    """One write(2) of the whole value: the kernel parses each write on its own, so a value split over two
    writes would be read as two values. No O_CREAT: a key missing on this kernel stays missing (ENOENT), also
    under a test's temporary procfs. O_TRUNC is harmless on procfs and replaces a test file's content."""
    data = (text + "\n").encode("ascii")
    fd = os.open(key_path(procfs, key), os.O_WRONLY | os.O_TRUNC)
    try:
        n = os.write(fd, data)
    finally:
        os.close(fd)
    if n != len(data):
        raise OSError(0, f"short write ({n} of {len(data)} bytes)")
