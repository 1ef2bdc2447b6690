"""Runs a vendor tool (amd-smi, nvidia-smi, and later the diagnostics) as a child process under a deadline.

The tool runs in its own process group, so a timeout kills every helper it forked; a missing binary is
Unavailable (the tool is simply not installed), never a hardware fault.
"""
from __future__ import annotations

import os
import signal
import subprocess


class Unavailable(Exception):
    """The library or tool cannot run on this node (missing, driver not loaded). Not a fault of the hardware."""


def run_tool(argv: list[str], timeout: float) -> str:
    """Run a vendor CLI in its own process group with a timeout; on timeout kill the whole group (amd-smi
    forks helpers) and raise TimeoutError. A missing binary is Unavailable."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} not found") from None
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
