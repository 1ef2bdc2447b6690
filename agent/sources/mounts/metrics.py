"""The mounts source's metric families, declared once with their label names."""
from __future__ import annotations

from agent.base.metrics import Gauge

MOUNT_RESPONSIVE = Gauge("vigil_mount_responsive", "1 when a stat and a small read of the mount point returned "
                         "within the deadline, 0 when not (hung or failed).", ("mountpoint",))
MOUNT_SIZE = Gauge("vigil_mount_size_bytes", "Size of the filesystem at the mount point.", ("mountpoint",))
MOUNT_FREE = Gauge("vigil_mount_available_bytes", "Bytes available to unprivileged users at the mount point.",
                   ("mountpoint",))
MOUNT_INODES = Gauge("vigil_mount_inodes", "Inodes of the filesystem at the mount point.", ("mountpoint",))
MOUNT_INODES_FREE = Gauge("vigil_mount_inodes_available", "Inodes available at the mount point.", ("mountpoint",))
MOUNT_INFO = Gauge("vigil_mount_info", "A checked mount point (1): its filesystem type and why it is checked.",
                   ("fstype", "mountpoint", "role"))
