"""NVML's event API in its own daemon thread: Xid critical errors and GPU recovery-action changes, queued for
the collector to drain each cycle.

    nvmlInit -> nvmlEventSetCreate -> per GPU: nvmlDeviceGetSupportedEventTypes, nvmlDeviceRegisterEvents(mask)
    loop: nvmlEventSetWait_v2(set, wait_ms)  -> c_nvmlEventData_t {device, eventType, eventData, gpuInstanceId, ...}
          NVML_ERROR_TIMEOUT (10) just means "nothing happened"; the loop checks its stop flag each time round
    finally: nvmlEventSetFree, nvmlShutdown

`pynvml` (nvidia-ml-py) is imported in the thread, never at module import. The wait is a blocking ctypes call
that releases the GIL; its timeout bounds how long close() waits. A wait that hangs in the driver past its
own timeout cannot be interrupted: close() gives up after `wait_ms` plus a second and leaves the daemon thread
behind (it ends with the process), rather than hanging the agent's shutdown.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.sources.gpu.nvml import text as _text  # pynvml's str or bytes, cleaned
from agent.base.pci import normalize as normalize_pci

log = logging.getLogger(__name__)

EVENT_XID = 0x0000000000000008  # nvmlEventTypeXidCriticalError: eventData is the Xid
EVENT_RECOVERY_ACTION = 0x0000000000008000  # nvmlEventTypeGpuRecoveryAction: eventData is the new action
WANTED = EVENT_XID | EVENT_RECOVERY_ACTION
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_NOT_SUPPORTED = 3
INSTANCE_ANY = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId when the event is not attributed to a MIG instance


@dataclass(frozen=True)
class NvmlEvent:
    n: int  # arrival counter (unique in this process)
    event_type: int
    data: int  # the Xid, or the recovery action
    gpu: str | None  # minor number as a string (the `gpu` label), when the device was registered
    pci: str | None
    gpu_instance: int | None
    at: float  # wall clock when it was taken off the wait


def handle_key(h: Any) -> Any:
    """A hashable identity for an NVML device handle: the address for ctypes pointers (the event's `device` is
    a new pointer object to the same device), the object itself otherwise (test doubles)."""
    try:
        return ctypes.cast(h, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return id(h)


class NvmlEventWatcher:
    def __init__(self, lib: Any = None, wait_ms: int = 1000, max_queued: int = 10000) -> None:
        self._lib = lib
        self.wait_ms = wait_ms
        self._queue: collections.deque[NvmlEvent] = collections.deque(maxlen=max_queued)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = 0
        self.dropped = 0
        self.devices: dict[Any, tuple[str | None, str | None]] = {}  # handle key -> (minor, pci)
        self.error: str | None = None  # why the watcher is not (or no longer) running
        self.registered = 0

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, ready_timeout: float = 5.0) -> bool:
        """Start the thread and wait (bounded) until it registered its GPUs. True when it is watching."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nvml-events", daemon=True)
            self._thread.start()
        self._ready.wait(ready_timeout)
        return self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None and self._ready.is_set()

    def close(self) -> bool:
        """Stop the thread; True when it ended within its wait timeout (plus a second)."""
        self._stop.set()
        t = self._thread
        if t is None:
            return True
        t.join(self.wait_ms / 1000.0 + 1.0)
        if t.is_alive():
            log.warning("nvml-events: nvmlEventSetWait did not return within %d ms; abandoning its thread",
                        self.wait_ms)
            return False
        return True

    def drain(self) -> list[NvmlEvent]:
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def gpu_map(self) -> dict[str, str]:
        """PCI address -> minor number, for every registered GPU."""
        return {pci: minor for minor, pci in self.devices.values() if pci and minor is not None}

    # -- the thread -----------------------------------------------------------------------------------------
    def _library(self) -> Any:
        if self._lib is None:
            import pynvml  # noqa: PLC0415 - lazy on purpose
            self._lib = pynvml
        return self._lib

    def _run(self) -> None:
        try:
            lib = self._library()
        except ImportError as e:
            self.error = f"nvidia-ml-py (pynvml) is not installed: {e}"
            self._ready.set()
            return
        try:
            lib.nvmlInit()
        except Exception as e:  # noqa: BLE001 - NVMLError or a missing libnvidia-ml: the source is unavailable
            self.error = f"nvmlInit failed: {e}"
            self._ready.set()
            return
        event_set = None
        try:
            event_set = lib.nvmlEventSetCreate()
            self._register(lib, event_set)
            if not self.registered:
                self.error = "no GPU supports Xid or recovery-action events"
            self._ready.set()
            if self.error is None:
                self._loop(lib, event_set)
        except Exception as e:  # noqa: BLE001 - reported, never raised into the agent
            self.error = f"NVML event thread failed: {e}"
            log.warning("nvml-events: %s", self.error)
        finally:
            self._ready.set()
            if event_set is not None:
                try:
                    lib.nvmlEventSetFree(event_set)
                except Exception:  # noqa: BLE001
                    pass
            try:
                lib.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass

    def _register(self, lib: Any, event_set: Any) -> None:
        for i in range(lib.nvmlDeviceGetCount()):
            try:
                h = lib.nvmlDeviceGetHandleByIndex(i)
            except lib.NVMLError as e:
                log.warning("nvml-events: GPU %d: no handle: %s", i, e)
                continue
            minor = pci = None
            try:
                minor = str(int(lib.nvmlDeviceGetMinorNumber(h)))
            except lib.NVMLError:
                minor = str(i)
            try:
                pci = normalize_pci(_text(getattr(lib.nvmlDeviceGetPciInfo(h), "busId", None)))
            except lib.NVMLError:
                pass
            self.devices[handle_key(h)] = (minor, pci)
            try:
                supported = int(lib.nvmlDeviceGetSupportedEventTypes(h))
            except lib.NVMLError:
                supported = EVENT_XID  # older drivers: ask for Xids, the one type every data-center GPU has
            mask = supported & WANTED
            if not mask:
                continue
            try:
                lib.nvmlDeviceRegisterEvents(h, mask, event_set)
                self.registered += 1
            except lib.NVMLError as e:  # NotSupported on some GPUs, or the GPU is lost
                log.warning("nvml-events: GPU %s: cannot register events: %s", minor, e)

    def _loop(self, lib: Any, event_set: Any) -> None:
        while not self._stop.is_set():
            try:
                data = lib.nvmlEventSetWait_v2(event_set, self.wait_ms)
            except lib.NVMLError as e:
                if getattr(e, "value", None) == NVML_ERROR_TIMEOUT:
                    continue
                # A GPU lost or the driver unloaded: note it, back off, keep watching the others.
                log.warning("nvml-events: nvmlEventSetWait: %s", e)
                self._stop.wait(min(5.0, self.wait_ms / 1000.0))
                continue
            self._put(data)

    def _put(self, data: Any) -> None:
        minor, pci = self.devices.get(handle_key(getattr(data, "device", None)), (None, None))
        gi = getattr(data, "gpuInstanceId", INSTANCE_ANY)
        with self._lock:
            self._counter += 1
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(NvmlEvent(self._counter, int(getattr(data, "eventType", 0)),
                                         int(getattr(data, "eventData", 0)), minor, pci,
                                         None if gi in (None, INSTANCE_ANY) else int(gi), time.time()))
