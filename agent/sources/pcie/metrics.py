"""The PCIe AER source's metric families."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge

AER_ERRORS = Counter("vigil_pcie_aer_errors_total", "PCIe AER errors a device reported since boot, by severity and "
                     "error type (the kernel's aer_dev_* counters; type total is the kernel's TOTAL_ERR_*).",
                     ("device", "severity", "type"))
AER_DEVICE = Gauge("vigil_pcie_aer_device_info", "A PCI device whose AER counters are read (1), and its role "
                   "(gpu, nic, nvme, or bridge above one of them).", ("device", "role"))
