"""The NVMe source's metric families."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge

NVME_CRITICAL_WARNING = Gauge("vigil_nvme_critical_warning", "The SMART log's critical warning bit field (0: none).",
                              ("device",))
NVME_USED = Gauge("vigil_nvme_percentage_used_ratio", "Estimated share of the drive's endurance used (may exceed 1).",
                  ("device",))
NVME_SPARE = Gauge("vigil_nvme_available_spare_ratio", "Remaining spare capacity (0..1).", ("device",))
NVME_SPARE_THRESHOLD = Gauge("vigil_nvme_available_spare_threshold_ratio", "The drive's spare threshold (0..1).",
                             ("device",))
NVME_MEDIA_ERRORS = Counter("vigil_nvme_media_errors_total", "Unrecovered data integrity errors the controller "
                            "detected over the drive's life.", ("device",))
NVME_TEMPERATURE = Gauge("vigil_nvme_temperature_celsius", "Composite temperature.", ("device",))
NVME_INFO = Gauge("vigil_nvme_info", "A local NVMe controller (1) as sysfs shows it without privileges: model, "
                  "serial, firmware and the kernel's controller state (live, resetting, dead ...).",
                  ("device", "firmware_revision", "model", "serial", "state"))
