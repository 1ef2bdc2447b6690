"""The small Protocol in front of every GPU library or tool, and helpers the backends share."""
from __future__ import annotations

from typing import Protocol

from agent.base.tools import Unavailable
from .model import GpuInventory


# The backend cannot run on this node (library or tool missing, driver not loaded). Not a GPU fault.
BackendUnavailable = Unavailable


class GpuBackend(Protocol):
    name: str  # amdsmi | amd-smi | nvml | nvidia-smi
    vendor: str  # amd | nvidia

    def read(self) -> GpuInventory:
        """One full reading of every GPU. May block in the driver: the runner calls it under a deadline.
        Raises BackendUnavailable when the library/tool is missing."""
        ...

    def close(self) -> None: ...
