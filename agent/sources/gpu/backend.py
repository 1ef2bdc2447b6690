"""The small Protocol in front of every GPU library or tool, and helpers the backends share."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Protocol

from .model import GpuInventory


class BackendUnavailable(Exception):
    """The backend cannot run on this node (library or tool missing, driver not loaded). Not a GPU fault."""


class GpuBackend(Protocol):
    name: str  # amdsmi | amd-smi | nvml | nvidia-smi
    vendor: str  # amd | nvidia

    def read(self) -> GpuInventory:
        """One full reading of every GPU. May block in the driver: the runner calls it under a deadline.
        Raises BackendUnavailable when the library/tool is missing."""
        ...

    def close(self) -> None: ...


def run_tool(argv: list[str], timeout: float) -> str:
    """Run a vendor CLI in its own process group with a timeout; on timeout kill the whole group (amd-smi
    forks helpers) and raise TimeoutError. A missing binary is BackendUnavailable."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        raise BackendUnavailable(f"{argv[0]} not found") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=1)  # reap it if the kernel lets us; a D-state child may not die
        except subprocess.TimeoutExpired:
            pass
        raise TimeoutError(f"{' '.join(argv)} did not finish in {timeout:.0f}s (process group killed)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {(err or out).strip()[:300]}")
    return out
