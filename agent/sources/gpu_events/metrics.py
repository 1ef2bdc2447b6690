"""The GPU event source's metric families, declared once with their label names."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge

GPU_EVENTS = Counter("vigil_gpu_events_total", "GPU events seen by this agent since it started (Xids, resets, CPER "
                     "records, RAS errors).", ("code", "gpu", "kind"))
GPU_EVENT_SOURCE_UP = Gauge("vigil_gpu_event_source_up", "1 when this GPU event source was read in the last cycle.",
                            ("source",))
GPU_EVENTS_FOLDED = Counter("vigil_gpu_events_folded_total", "GPU events identical to one already held (same check, "
                            "GPU, kind, code and detail) and folded into its episode instead of kept apart.", ())
GPU_EVENT_EPISODES_OVERFLOWED = Counter("vigil_gpu_event_episodes_overflowed_total", "New distinct GPU event "
                                        "episodes folded into an existing one because the episode table was full.", ())
