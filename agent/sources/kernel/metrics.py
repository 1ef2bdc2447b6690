"""The kernel log rules' metric families, declared once with their label names."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge

KERNEL_CONDITION = Gauge("vigil_kernel_condition", "1 while a kernel log condition (a permanent rule, "
                         "node-problem-detector style) is set on this node, 0 otherwise.", ("condition",))
KERNEL_MATCHES = Counter("vigil_kernel_rule_matches_total", "Kernel log lines matched by a rule, since the agent "
                         "started.", ("reason", "type"))
KERNEL_RECORDS = Counter("vigil_kernel_log_records_total", "Kernel log records judged since the agent started.")
KERNEL_MISSED = Counter("vigil_kernel_log_missed_records_total", "Kernel log records the shared reader dropped "
                        "before the kernel rules read them (its buffer was full).")
KERNEL_LOG_UP = Gauge("vigil_kernel_log_up", "1 when the kernel log was read in the last cycle.")
