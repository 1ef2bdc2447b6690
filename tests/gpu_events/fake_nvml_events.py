"""tests/gpu/fake_pynvml.FakePynvml (a real H100's NVML answers) plus the event API, as nvidia-ml-py 13.x has
it: nvmlEventSetCreate, nvmlDeviceGetSupportedEventTypes, nvmlDeviceRegisterEvents, nvmlEventSetWait_v2 (raises
NVMLError with value NVML_ERROR_TIMEOUT (10) when nothing arrives in time, returns a c_nvmlEventData_t-like
object with device/eventType/eventData/gpuInstanceId/computeInstanceId), nvmlEventSetFree. Built by
subclassing; tests/gpu/fake_pynvml.py is untouched.

`fire(...)` queues an event for the GPU at an index; `hang()` makes the next wait ignore its timeout and block
(a wait stuck in the driver) until `release()`."""
from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from tests.gpu.fake_pynvml import ERROR_CODES, FakePynvml, NVMLError, load_capture

EVENT_XID = 0x8
EVENT_RECOVERY_ACTION = 0x8000
INSTANCE_ANY = 0xFFFFFFFF


class FakeEventSet:
    def __init__(self) -> None:
        self.registered: list[tuple[object, int]] = []
        self.freed = False


class FakePynvmlEvents(FakePynvml):
    nvmlEventTypeXidCriticalError = EVENT_XID
    nvmlEventTypeGpuRecoveryAction = EVENT_RECOVERY_ACTION

    def __init__(self, capture: dict | None = None, supported: int = EVENT_XID | EVENT_RECOVERY_ACTION | 0x3,
                 **kw) -> None:
        cap = capture if capture is not None else load_capture()
        for i, gpu in enumerate(cap["gpus"]):  # the capture has no minor number; a real GPU has one
            gpu.setdefault("minor_number", i)
        super().__init__(cap, **kw)
        self.supported = supported
        self._events: queue.Queue = queue.Queue()
        self._hang = threading.Event()
        self._release = threading.Event()
        self.waits = 0
        self.sets: list[FakeEventSet] = []
        self.handles: dict[int, object] = {}

    def nvmlDeviceGetHandleByIndex(self, index: int):
        h = self.handles.get(index)
        if h is None:
            h = self.handles[index] = super().nvmlDeviceGetHandleByIndex(index)
        return h

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._enter("nvmlEventSetCreate")
        es = FakeEventSet()
        self.sets.append(es)
        return es

    def nvmlDeviceGetSupportedEventTypes(self, h) -> int:
        self._enter("nvmlDeviceGetSupportedEventTypes")
        return self.supported

    def nvmlDeviceRegisterEvents(self, h, mask: int, es: FakeEventSet) -> None:
        self._enter("nvmlDeviceRegisterEvents")
        if mask & ~self.supported:
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"])  # as NVML does for an unsupported type
        es.registered.append((h, mask))

    def nvmlEventSetWait_v2(self, es: FakeEventSet, timeout_ms: int):
        self._enter("nvmlEventSetWait_v2")
        self.waits += 1
        if self._hang.is_set():
            self._release.wait()  # stuck in the driver: the timeout is not honoured
            raise NVMLError(ERROR_CODES["NVML_ERROR_TIMEOUT"])
        try:
            return self._events.get(timeout=timeout_ms / 1000.0)
        except queue.Empty:
            raise NVMLError(ERROR_CODES["NVML_ERROR_TIMEOUT"]) from None

    def nvmlEventSetFree(self, es: FakeEventSet) -> None:
        self._enter("nvmlEventSetFree")
        es.freed = True

    # -- test controls ------------------------------------------------------------------------------------
    def fire(self, event_type: int, data: int, gpu: int = 0, instance: int = INSTANCE_ANY) -> None:
        self._events.put(SimpleNamespace(device=self.nvmlDeviceGetHandleByIndex(gpu), eventType=event_type,
                                         eventData=data, gpuInstanceId=instance, computeInstanceId=INSTANCE_ANY))

    def hang(self) -> None:
        self._hang.set()

    def release(self) -> None:
        self._release.set()
