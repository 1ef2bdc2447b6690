"""Fake SMI tools for the GPU room: real executable scripts on PATH that hang, flood, escape their process
group, print bytes that are not UTF-8, or get stuck in the kernel the way an SMI call stuck in the driver does.

A process in a frozen cgroup-v1 freezer is in D state and a SIGKILL stays pending until the group is thawed:
the same as an amd-smi blocked in the amdgpu driver, which no signal ends until the driver lets go."""
from __future__ import annotations

import os
import signal
import stat
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

FREEZER = Path("/sys/fs/cgroup/freezer")


def fake_tool(bin_dir: Path, body: str, name: str = "amd-smi") -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def state(pid: int) -> str | None:
    """The kernel's state letter of a process (D, S, Z ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def our_zombies() -> list[int]:
    """Children of this process that died and were never reaped."""
    me, out = os.getpid(), []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            out.append(int(p))
    return out


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextmanager
def freezer_cgroup():
    """A fresh cgroup-v1 freezer group; thawed, emptied (its processes killed by pid) and removed after."""
    if not os.access(FREEZER / "cgroup.procs", os.W_OK):
        pytest.skip("needs root and the cgroup-v1 freezer at /sys/fs/cgroup/freezer (a frozen task is the only "
                    "faithful stand-in for a D-state SMI call; cgroup-v2's freezer lets SIGKILL through)")
    group = FREEZER / f"vigil-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        (group / "freezer.state").write_text("THAWED\n")
        for pid in (int(p) for p in (group / "cgroup.procs").read_text().split()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip())
        group.rmdir()


def freezing_body(group: Path, counter: Path | None = None) -> str:
    """A tool that counts its starts, then freezes itself (stuck in the 'driver') before printing anything."""
    count = f'echo x >> "{counter}"\n' if counter else ""
    return f'{count}echo $$ > "{group}/cgroup.procs"\necho FROZEN > "{group}/freezer.state"\necho "{{}}"\n'


def thaw(group: Path) -> None:
    (group / "freezer.state").write_text("THAWED\n")
