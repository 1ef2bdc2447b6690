"""The GPU event source's metric families, declared once with their label names."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge

GPU_EVENTS = Counter("vigil_gpu_events_total", "GPU events seen by this agent since it started (Xids, resets, CPER "
                     "records, RAS errors).", ("code", "gpu", "kind"))
GPU_EVENT_SOURCE_UP = Gauge("vigil_gpu_event_source_up", "1 when this GPU event source was read in the last cycle.",
                            ("source",))
