"""/proc/mounts (and /proc/<pid>/mounts): `device mountpoint fstype options dump pass`, with space, tab,
newline and backslash in names escaped as octal (\\040, \\011, \\012, \\134). A line that is not six fields
costs that line."""
from __future__ import annotations

import re
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")
MAX_MOUNTS = 100_000


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines()[:MAX_MOUNTS]:
        parts = line.split()
        if len(parts) != 6 or not parts[1].startswith("/"):
            continue
        out.append(Mount(unescape(parts[0]), unescape(parts[1]), parts[2], tuple(parts[3].split(","))))
    return out


def containing(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a path lives on: the last-mounted entry with the longest matching mount point."""
    best = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/"):
                best = m
    return best
