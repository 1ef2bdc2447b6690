"""File limits of running host processes through psutil (the prlimit(2) syscall): read and set another
process's soft/hard limits in place, so what a daemon such as containerd starts afterwards inherits them.
Needs the host's PID namespace (the DaemonSet runs with hostPID) and CAP_SYS_RESOURCE to raise a hard limit.
Unlimited is math.inf here and RLIM_INFINITY at the syscall."""
from __future__ import annotations

import errno
from typing import Iterable, Protocol

import psutil

from .values import UNLIMITED

_RESOURCE = {"nofile": psutil.RLIMIT_NOFILE, "memlock": psutil.RLIMIT_MEMLOCK}


class ProcessLimits(Protocol):
    def find(self, names: Iterable[str]) -> dict[str, list[int]]: ...
    def get(self, pid: int, resource: str) -> tuple[float, float]: ...
    def set(self, pid: int, resource: str, limits: tuple[float, float]) -> None: ...


def _from_kernel(n: int) -> float:
    return UNLIMITED if n == psutil.RLIM_INFINITY else n


def _to_kernel(n: float) -> int:
    return psutil.RLIM_INFINITY if n == UNLIMITED else int(n)


def _oserror(e: Exception) -> OSError:
    """psutil's own exceptions as the errno the syscall gave, so findings name errnos uniformly."""
    if isinstance(e, psutil.NoSuchProcess):  # includes ZombieProcess
        return OSError(errno.ESRCH, "no such process")
    if isinstance(e, psutil.AccessDenied):
        return OSError(errno.EPERM, "operation not permitted")
    return e if isinstance(e, OSError) else OSError(errno.EINVAL, str(e))


class PsutilLimits:
    """The live implementation. Processes are matched by exact name (psutil's name(): the full executable
    name even past the kernel's 15-character comm)."""

    def find(self, names: Iterable[str]) -> dict[str, list[int]]:
        wanted = set(names)
        found: dict[str, list[int]] = {n: [] for n in wanted}
        for p in psutil.process_iter(["name"]):
            name = p.info.get("name")
            if name in wanted:
                found[name].append(p.pid)
        return {n: sorted(pids) for n, pids in found.items()}

    def get(self, pid: int, resource: str) -> tuple[float, float]:
        try:
            soft, hard = psutil.Process(pid).rlimit(_RESOURCE[resource])
        except (psutil.Error, OSError, ValueError) as e:
            raise _oserror(e) from None
        return _from_kernel(soft), _from_kernel(hard)

    def set(self, pid: int, resource: str, limits: tuple[float, float]) -> None:
        try:
            psutil.Process(pid).rlimit(_RESOURCE[resource], (_to_kernel(limits[0]), _to_kernel(limits[1])))
        except (psutil.Error, OSError, ValueError) as e:
            raise _oserror(e) from None
