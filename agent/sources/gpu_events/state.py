"""What gpu_events remembers across agent restarts: cursors and the sticky findings.

One small JSON file (<state_dir>/gpu_events.json), rewritten atomically (temporary file in the same directory,
fsync, rename, fsync of the directory) so a crash leaves the old or the new file, never half of one.

Cursors
  kmsg: the boot id (/proc/sys/kernel/random/boot_id) and the last sequence number handled in that boot.
        Sequence numbers restart at boot, so a cursor from another boot id is dropped, not compared.
  cper: per GPU, the fingerprints of the records amd-smi listed at the last successful read. The CPER ring is
        bounded, so this set is too; a record is new when its fingerprint was not listed last time. This is
        deliberately NOT keyed by boot id and NOT a "highest record id" watermark: amdgpu's record counter
        restarts at every driver load (so a watermark would hide new records after a reload), and where records
        survive a reboot (firmware-kept ones) a per-boot cursor would let them fire again after every reboot
        (the stale-CPER bug DESIGN §2 warns about).
Sticky findings
  fatal and warning events stay until their GPU is reset or the node reboots; they are persisted because the
  cursor guarantees the event that raised them will not be read again. A new boot id drops them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from agent.base import statefile

log = logging.getLogger(__name__)

VERSION = 1
FILENAME = "gpu_events.json"


@dataclass
class Sticky:
    """An event that keeps its GPU's check unhealthy until a reset or a reboot."""

    check: str
    entity: str  # gpu3, or pci:0000:3b:00.0 when the index is not known
    gpu: str  # the `gpu` label (index, or the PCI address)
    kind: str
    code: str
    severity: str  # fatal | warning
    description: str
    action: str | None
    text: str
    key: str  # the event's identity (kmsg seq, CPER fingerprint, NVML counter)
    at: float | None  # wall-clock time of the event when known
    pci: str | None = None
    # Identical events later in the same boot fold into this one (agent/base/episodes.py): how many, the last's
    # time and key. `detail` tells apart events of one kind and code (RAS block, AFIDs).
    detail: str = ""
    count: int = 1
    last_at: float | None = None
    last_key: str = ""

    @property
    def signature(self) -> tuple:
        return (self.check, self.entity, self.kind, self.code, self.severity, self.detail)


@dataclass
class EventState:
    boot_id: str | None = None
    kmsg_seq: int | None = None  # last kernel record handled in boot_id
    cper: dict[str, list[str]] = field(default_factory=dict)  # GPU index -> fingerprints listed last time
    sticky: list[Sticky] = field(default_factory=list)
    last_reset: dict[str, float] = field(default_factory=dict)  # entity -> wall-clock time of its last reset

    def new_boot(self, boot_id: str | None) -> bool:
        """Adopt `boot_id`; on a change, forget what belonged to the old boot. True when it changed."""
        if boot_id == self.boot_id:
            return False
        if self.boot_id is not None:
            log.info("gpu_events: new boot (%s -> %s): kernel cursor and sticky events reset", self.boot_id, boot_id)
        self.boot_id = boot_id
        self.kmsg_seq = None
        self.sticky = []
        self.last_reset = {}
        return True

    def to_json(self) -> dict:
        return {"version": VERSION, "boot_id": self.boot_id, "kmsg_seq": self.kmsg_seq, "cper": self.cper,
                "sticky": [asdict(s) for s in self.sticky], "last_reset": self.last_reset}

    @classmethod
    def from_json(cls, doc: dict) -> "EventState":
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"unsupported state version {doc.get('version') if isinstance(doc, dict) else doc!r}")
        names = {f.name for f in fields(Sticky)}
        sticky = [Sticky(**{k: v for k, v in s.items() if k in names}) for s in doc.get("sticky") or []]
        for s in sticky:  # a file from before episodes, or a hand-edited one
            s.count = s.count if isinstance(s.count, int) and s.count >= 1 else 1
        cper = {str(k): [str(x) for x in v] for k, v in (doc.get("cper") or {}).items() if isinstance(v, list)}
        seq = doc.get("kmsg_seq")
        return cls(doc.get("boot_id"), int(seq) if isinstance(seq, int) else None, cper, sticky,
                   {str(k): float(v) for k, v in (doc.get("last_reset") or {}).items()})


def load(path: Path) -> EventState:
    """The saved state, or a fresh one when there is none or it cannot be read (logged: a fresh state only
    means old events may be reported once more, never that new ones are missed)."""
    try:
        return EventState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return EventState()
    except (OSError, ValueError, TypeError) as e:
        log.warning("gpu_events: ignoring unreadable state %s: %s", path, e)
        return EventState()


def save(path: Path, state: EventState) -> None:
    """Atomically (a temporary file, fsync, rename, fsync of the directory): a crash leaves the old or the new."""
    statefile.save_json(path, state.to_json())
