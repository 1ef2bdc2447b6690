"""GPU events: NVIDIA Xids and GPU resets, AMD RAS errors and CPER records (DESIGN §2 "GPU events").

Sources, each optional (a missing one is reported by vigil_gpu_event_source_up, not as a failure):
  kmsg  the kernel log. Live: /dev/kmsg, read non-blocking from the start of the ring buffer on the first read
        (what happened while the agent was down), then incrementally through the same open descriptor; a
        persisted cursor (boot id + last sequence number) keeps a restarted agent from re-reading old records.
        Snapshot: DIR/kmsg.txt in /dev/kmsg record format (agent/sources/gpu_events/kmsg.py). Xids from any driver,
        amdgpu RAS errors and resets, operator reset acknowledgements.
  nvml  NVML's event API (Xid critical errors, recovery-action changes) in its own thread (nvml_events.py).
        Live only. The kernel log carries the same Xids with more context, so while kmsg is readable NVML's Xids
        are dropped as duplicates and only its "recovery action is now None" (a reset kmsg cannot see) is used;
        without kmsg (no CAP_SYSLOG, /dev/kmsg not mounted) NVML is the Xid source.
  cper  `amd-smi ras --cper --severity all --folder <tmp> --json` (live, AMD GPUs only), or a snapshot's
        DIR/amd-smi/cper/ (stdout.txt and the dumped <sev>-<n>.json headers). Cursor: state.py.

Findings: one per (check, GPU) for gpu.xid (NVIDIA), gpu.ras and gpu.cper (AMD), gpu.reset (failed resets);
sticky/once semantics and what a reset is: agent/sources/gpu_events/rules.py. The entity is gpuN when the event's PCI
address maps to a GPU index (the gpu collector's readings in ctx.facts.gpus when it publishes them, else
/proc/driver/nvidia/gpus/*/information, NVML, `amd-smi list`, or a snapshot's SMI files), else
"pci:0000:3b:00.0".

Metrics: vigil_gpu_events_total{gpu,kind,code} counts the events this agent process has seen since it
started (including the kernel-log backlog past the persisted cursor): a plain Prometheus counter that restarts
with the process, not seeded from the state file (rate()/increase() handle the restart). kind: xid, reset,
cper, and ras (amdgpu's kernel RAS messages). vigil_gpu_event_source_up{source} says which sources are read.

State (cursor + sticky findings) lives in <state_dir>/gpu_events.json. It is written by the running agent only:
`agent --once` reads it (to show what is still sticky) but never advances it, and a snapshot replay neither
reads nor writes it.
"""
from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent.base.config import CollectorSettings, ConfigError, in_range
from agent.base.findings import Finding, unknown, with_bus_ids
from . import cper as cper_parser
from . import kmsg as kmsg_parser
from . import rules
from . import state as state_store
from . import xid as xids
from .model import CPER, RAS, RESET, XID, GpuEvent
from agent.base.pci import count_gpus, normalize as normalize_pci
from .nvml_events import EVENT_RECOVERY_ACTION, EVENT_XID, NvmlEvent, NvmlEventWatcher
from .state import EventState, Sticky
from agent.base.metrics import MetricSet
from .metrics import GPU_EVENT_EPISODES_OVERFLOWED, GPU_EVENT_SOURCE_UP, GPU_EVENTS, GPU_EVENTS_FOLDED
from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.errors import error_text
from agent.base.kmsg import KmsgReader, KmsgSubscription, subscribe  # noqa: F401 (KmsgReader re-exported)
from agent.base.tools import Unavailable, run_tool

log = logging.getLogger(__name__)

KMSG, NVML, CPER_SOURCE = "kmsg", "nvml", "cper"
CPER_SEVERITY = {
    cper_parser.FATAL_SEV: (xids.FATAL, "fatal hardware error",
                            "drain the GPU and reset it; send the CPER file to AMD support if it recurs"),
    cper_parser.UNCORRECTED: (xids.WARNING, "non-fatal uncorrected error", "reset the GPU when it is idle"),
    cper_parser.CORRECTED: (xids.INFO, "corrected error", "none"),
}
_UNSUPPORTED_CPER = ("requires cper to be enabled", "not supported", "invalid choice", "unrecognized arguments")


@dataclass
class GpuEventsSettings(CollectorSettings):
    timeout_seconds: float = 20.0  # amd-smi ras --cper can take seconds on an 8-GPU node
    state_dir: str = "/var/lib/vigil"  # where the cursor and sticky events persist; "" keeps them in memory
    kmsg_path: str = "/dev/kmsg"
    nvml_events: bool = True  # NVIDIA: watch NVML's event API in a thread
    nvml_wait_ms: int = 1000  # one nvmlEventSetWait; bounds how long stopping the thread takes
    cper: bool = True  # AMD: read CPER records through amd-smi
    smi_timeout_seconds: float = 15.0  # one amd-smi run
    cper_retry_seconds: float = 600.0  # after amd-smi said CPER is unsupported, or hung, try again this late
    max_records_per_read: int = 100000  # kernel records taken per read (the rest waits for the next read)
    # Per-Xid severity overrides: {"109": "warning", "13": "ignore"}; ignore = counted, no finding.
    xid_severity: dict[str, str] = field(default_factory=dict)

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        for code, sev in self.xid_severity.items():
            # ASCII digits: "²".isdigit() is True, and the catalogue's keys are what int() makes of them
            if not (str(code).isascii() and str(code).isdigit() and len(str(code)) <= 6):
                raise ConfigError(f"{prefix}.xid_severity.{code}: not an Xid number")
            if sev not in (xids.FATAL, xids.WARNING, xids.INFO, xids.IGNORE):
                raise ConfigError(f"{prefix}.xid_severity.{code}: must be one of fatal, warning, info, ignore")
        if self.nvml_wait_ms <= 0:
            raise ConfigError(f"{prefix}.nvml_wait_ms: must be > 0")
        in_range(f"{prefix}.nvml_wait_ms", self.nvml_wait_ms, 1, 60_000)  # stopping the thread waits this long
        if self.max_records_per_read <= 0:
            raise ConfigError(f"{prefix}.max_records_per_read: must be > 0")
        in_range(f"{prefix}.max_records_per_read", self.max_records_per_read, 1, 10_000_000)
        if self.smi_timeout_seconds > self.timeout_seconds:  # as gpu: a slow amd-smi is not a hung one
            raise ConfigError(f"{prefix}.smi_timeout_seconds: must be at most {prefix}.timeout_seconds "
                              f"({self.timeout_seconds:g}), got {self.smi_timeout_seconds:g}")


@dataclass
class EventsReading:
    sticky: list[Sticky]
    once: list[rules.Shown]
    counts: dict[tuple[str, str, str], int]
    known: dict[str, str]  # entity -> vendor
    checks: set[str]  # kinds whose source ran (xid, ras, cper, reset)
    remembered: set[tuple[str, str]]
    sources: dict[str, str | None]  # source -> None when read, else why not
    problems: list[tuple[str, str]] = field(default_factory=list)  # (check, message): could not run
    folded: int = 0  # events folded into an existing episode since the agent started
    overflowed: int = 0  # distinct episodes folded into another one because the table was full
    bus: dict[str, str] = field(default_factory=dict)  # entity (gpuN) -> its PCI bus address, where known


class GpuIndex:
    """PCI address -> GPU index, and which vendor each known GPU is."""

    def __init__(self) -> None:
        self.by_pci: dict[str, str] = {}
        self.vendor: dict[str, str] = {}  # index -> vendor

    def add(self, pci: str | None, index: Any, vendor: str | None) -> None:
        if index is None:
            return
        idx = str(index)
        if pci:
            self.by_pci[pci] = idx
        if vendor:
            self.vendor.setdefault(idx, vendor)

    def lookup(self, pci: str | None) -> str | None:
        return self.by_pci.get(pci) if pci else None

    def known(self) -> dict[str, str]:
        return {f"gpu{idx}": vendor for idx, vendor in self.vendor.items()}


class GpuEventsCollector(Collector):
    name = "gpu_events"
    component = "gpu"
    Settings = GpuEventsSettings

    def __init__(self, settings: GpuEventsSettings, ctx: Context, nvml_lib: Any = None,
                 tool: Callable[[list[str], float], str] = run_tool) -> None:
        super().__init__(settings, ctx)
        self._nvml_lib = nvml_lib
        self._tool = tool
        self._state: EventState | None = None
        # Subscribed now (no I/O until the first read), so the kernel rules' reading first keeps the backlog for us.
        self._kmsg: KmsgSubscription | None = None if ctx.roots.snapshot is not None else \
            subscribe(settings.kmsg_path, settings.max_records_per_read)
        self._watcher: NvmlEventWatcher | None = None
        self._counts: dict[tuple[str, str, str], int] = {}
        self._remembered: set[tuple[str, str]] = set()
        self._static_index: GpuIndex | None = None  # snapshot SMI files / amd-smi list (cached)
        self._amd_list_at = -1e18
        self._cper_retry_at = 0.0
        self._pci: dict[str, int] | None = None
        self._save_error: str | None = None
        self._saved: dict | None = None  # the document last written: an unchanged state is not rewritten
        self._folded = 0
        self._overflowed = 0

    # -- where things are --------------------------------------------------------------------------------
    @property
    def _snapshot(self) -> Path | None:
        return self.ctx.roots.snapshot

    @property
    def _persist(self) -> bool:
        return bool(self.settings.state_dir) and self._snapshot is None and not self.ctx.mode.once

    @property
    def state_path(self) -> Path:
        return Path(self.settings.state_dir) / state_store.FILENAME

    def _boot_id(self) -> str | None:
        boot = self.ctx.roots.boot_id()
        return "snapshot" if boot is None and self._snapshot is not None else boot

    def _btime(self) -> float | None:
        try:
            for line in self.ctx.roots.proc("stat").read_text().splitlines():
                if line.startswith("btime "):
                    return float(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    # -- collector contract ------------------------------------------------------------------------------
    def read(self) -> EventsReading:
        if self._pci is None:
            self._pci = count_gpus(self.ctx.roots.sysfs) or {}
        state = self._load_state()
        state.new_boot(self._boot_id())
        btime = self._btime()
        sources: dict[str, str | None] = {}
        problems: list[tuple[str, str]] = []

        kernel = self._kernel_events(state, btime, sources)
        nvml = self._nvml_events(sources, kmsg_ok=sources.get(KMSG, "absent") is None,
                                 kernel_recoveries={e.pci for e in kernel if e.recovers})
        cper = self._cper_events(state, sources, problems)
        if not any(v is None for v in sources.values()):
            why = "; ".join(f"{k}: {v}" for k, v in sources.items()) or "no source configured"
            if self._snapshot is None and sum(self._pci.values()) > 0:
                raise RuntimeError(f"no GPU event source could be read ({why})")
            raise NoData(why)
        index = self._gpu_index()
        if self._snapshot is None and any(e.pci and index.lookup(e.pci) is None and e.kind != XID for e in kernel):
            index = self._gpu_index(refresh_amd=True)  # an amdgpu address we cannot name: ask amd-smi list again

        tracker = rules.Tracker(state, btime)
        for ev in kernel + nvml + cper:
            entity, gpu = self._entity(ev, index)
            if tracker.apply(ev, entity, gpu):
                key = (gpu, ev.kind, ev.code)
                self._counts[key] = self._counts.get(key, 0) + 1
        self._save(state)
        self._folded += tracker.folded
        self._overflowed += tracker.overflowed

        checks = set()
        if sources.get(KMSG, "absent") is None:
            checks |= {XID, RAS}
        if sources.get(NVML, "absent") is None:
            checks.add(XID)
        if sources.get(CPER_SOURCE, "absent") is None:
            checks.add(CPER)
        remembered = set(self._remembered)
        self._remembered |= {(s.check, s.entity) for s in state.sticky}
        once = tracker.once
        self._remembered |= {(o.check, o.entity) for o in once if o.entity}
        return EventsReading([copy.copy(s) for s in state.sticky], once, dict(self._counts), index.known(),
                             checks, remembered, sources, problems, self._folded, self._overflowed,
                             {f"gpu{idx}": pci for pci, idx in index.by_pci.items()})

    def evaluate(self, reading: EventsReading, previous: Observation | None, elapsed: float | None) -> Output:
        ms = MetricSet()
        ms.declare(GPU_EVENTS)
        for (gpu, kind, code), n in sorted(reading.counts.items()):
            ms.add(GPU_EVENTS, {"gpu": gpu, "kind": kind, "code": code}, n)
        for source, why in sorted(reading.sources.items()):
            ms.add(GPU_EVENT_SOURCE_UP, {"source": source}, 1 if why is None else 0)
        if reading.folded or reading.overflowed:  # only once a flood folded something: no series on quiet nodes
            ms.add(GPU_EVENTS_FOLDED, {}, reading.folded)
            ms.add(GPU_EVENT_EPISODES_OVERFLOWED, {}, reading.overflowed)
        out = rules.findings(reading.sticky, reading.once, reading.known, reading.checks, reading.remembered,
                             self.ctx.node)
        for check, message in reading.problems:
            out.append(unknown(check, self.component, self.ctx.node, message))
        return Output(ms, with_bus_ids(out, reading.bus))

    def failed(self, error: BaseException) -> list[Finding]:
        return [unknown("gpu.events", self.component, self.ctx.node, f"gpu_events failed: {error_text(error)}")]

    def unresponsive(self, stuck_seconds: float) -> list[Finding]:
        return [unknown("gpu.events", self.component, self.ctx.node,
                        f"gpu_events read stuck for {stuck_seconds:.0f}s (amd-smi ras --cper?)",
                        value=round(stuck_seconds, 1))]

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self.close_kmsg()

    # -- state ------------------------------------------------------------------------------------------
    def _load_state(self) -> EventState:
        if self._state is None:
            use_file = bool(self.settings.state_dir) and self._snapshot is None
            self._state = state_store.load(self.state_path) if use_file else EventState()
        return self._state

    def _save(self, state: EventState) -> None:
        if not self._persist:
            return
        doc = copy.deepcopy(state.to_json())  # a copy: to_json shares the state's dicts, mutated in place
        if doc == self._saved:  # nothing new this cycle: no rewrite, no fsync every interval
            return
        try:
            state_store.save(self.state_path, state)
            self._saved = doc
            self._save_error = None
        except OSError as e:
            text = f"{self.state_path}: {e.strerror or e}"
            if text != self._save_error:
                log.warning("gpu_events: cannot save state (events may be reported again after a restart): %s",
                            text)
            self._save_error = text

    # -- GPU index ---------------------------------------------------------------------------------------
    def _gpu_index(self, refresh_amd: bool = False) -> GpuIndex:
        index = GpuIndex()
        for g in self.ctx.facts.gpus or []:  # the gpu collector's readings, when it publishes them
            get = g.get if isinstance(g, dict) else lambda k, g=g: getattr(g, k, None)
            if get("partition"):
                continue
            index.add(normalize_pci(get("pci_bus_id")), get("index"), get("vendor"))
        static = self._static(refresh_amd)
        for pci, idx in static.by_pci.items():
            index.by_pci.setdefault(pci, idx)
        for idx, vendor in static.vendor.items():
            index.vendor.setdefault(idx, vendor)
        self._nvidia_proc(index)
        if self._watcher is not None:  # NVML knows its GPUs' minor numbers
            for pci, minor in self._watcher.gpu_map().items():
                index.add(pci, minor, "nvidia")
        return index

    def _static(self, refresh_amd: bool) -> GpuIndex:
        if self._static_index is not None and not refresh_amd:
            return self._static_index
        index = self._static_index or GpuIndex()
        snap = self._snapshot
        if snap is not None:
            if self._static_index is None:
                self._snapshot_index(snap, index)
        elif self._pci.get("amd") and time.monotonic() - self._amd_list_at > self.settings.cper_retry_seconds:
            self._amd_list_at = time.monotonic()
            try:
                self._amd_list(self._tool(["amd-smi", "list", "--json"], self.settings.smi_timeout_seconds), index)
            except (Unavailable, RuntimeError, TimeoutError, OSError) as e:
                log.debug("gpu_events: amd-smi list failed: %s", e)
        self._static_index = index
        return index

    @staticmethod
    def _amd_list(text: str, index: GpuIndex) -> None:
        from agent.sources.gpu.amd_smi_cli import decode_json, gpu_entries, gpu_index
        try:
            entries = gpu_entries(decode_json(text)) or []
        except ValueError:
            return
        for entry in entries:
            index.add(normalize_pci(str(entry.get("bdf") or "")), gpu_index(entry), "amd")

    def _snapshot_index(self, snap: Path, index: GpuIndex) -> None:
        xml = snap / "nvidia-smi" / "q.xml"
        if xml.is_file():
            from agent.sources.gpu.nvidia_smi_xml import parse_xml
            try:
                for g in parse_xml(xml.read_text(errors="replace")):
                    if not g.partition:
                        index.add(normalize_pci(g.pci_bus_id), g.index, "nvidia")
            except Exception as e:  # noqa: BLE001 - the gpu collector reports a broken XML; we only lose names
                log.debug("gpu_events: %s: %s", xml, e)
        amd_list = snap / "amd-smi" / "list.json"
        if amd_list.is_file():
            self._amd_list(amd_list.read_text(errors="replace"), index)

    def _nvidia_proc(self, index: GpuIndex) -> None:
        """/proc/driver/nvidia/gpus/<pci>/information: "Device Minor: N" (the index the gpu collector uses)."""
        root = self.ctx.roots.proc("driver", "nvidia", "gpus")
        try:
            dirs = list(root.iterdir())
        except OSError:
            return
        for d in dirs:
            try:
                for line in (d / "information").read_text().splitlines():
                    if line.startswith("Device Minor:"):
                        index.add(normalize_pci(d.name), int(line.split(":", 1)[1]), "nvidia")
            except (OSError, ValueError):
                continue

    @staticmethod
    def _entity(ev: GpuEvent, index: GpuIndex) -> tuple[str, str]:
        if ev.gpu is not None:
            return f"gpu{ev.gpu}", ev.gpu
        idx = index.lookup(ev.pci)
        if idx is not None:
            return f"gpu{idx}", idx
        if ev.pci:
            return f"pci:{ev.pci}", ev.pci
        return "", ""

    # -- sources -----------------------------------------------------------------------------------------
    def _kernel_events(self, state: EventState, btime: float | None, sources: dict) -> list[GpuEvent]:
        try:
            records = self._kernel_records()
        except FileNotFoundError:
            if self._snapshot is None:
                sources[KMSG] = f"{self.settings.kmsg_path} not found"
            return []
        except OSError as e:
            sources[KMSG] = f"{self._kmsg_name()}: {e.strerror or e}"
            self.close_kmsg()
            return []
        sources[KMSG] = None
        last = state.kmsg_seq
        out: list[GpuEvent] = []
        for rec in records:
            if last is not None and rec.seq <= last:
                continue
            out += kmsg_parser.events(rec, btime, self.settings.xid_severity)
            state.kmsg_seq = rec.seq if state.kmsg_seq is None else max(state.kmsg_seq, rec.seq)
        return out

    def _kmsg_name(self) -> str:
        return str(self._snapshot / "kmsg.txt") if self._snapshot is not None else self.settings.kmsg_path

    def _kernel_records(self) -> list[kmsg_parser.KmsgRecord]:
        if self._snapshot is not None:
            return kmsg_parser.parse_text((self._snapshot / "kmsg.txt").read_text(errors="replace"))
        if self._kmsg is not None and self._kmsg.path != self.settings.kmsg_path:
            self.close_kmsg()  # the path was changed after construction
        if self._kmsg is None:
            self._kmsg = subscribe(self.settings.kmsg_path, self.settings.max_records_per_read)
        return self._kmsg.read()

    def close_kmsg(self) -> None:
        if self._kmsg is not None:
            self._kmsg.close()
            self._kmsg = None

    def _nvml_events(self, sources: dict, kmsg_ok: bool, kernel_recoveries: set) -> list[GpuEvent]:
        if self._snapshot is not None or not self.settings.nvml_events:
            return []
        if self._nvml_lib is None and not self._pci.get("nvidia"):
            return []  # no NVIDIA GPU on the bus (tests inject a library to run without one)
        if self._watcher is None:
            self._watcher = NvmlEventWatcher(self._nvml_lib, self.settings.nvml_wait_ms)
            self._watcher.start()
        if not self._watcher.running:
            sources[NVML] = self._watcher.error or "NVML event thread not running"
            return []
        sources[NVML] = None
        out = []
        for e in self._watcher.drain():
            ev = nvml_event(e, self.settings.xid_severity)
            if ev is None:
                continue
            if kmsg_ok and not (ev.recovers and ev.pci not in kernel_recoveries):
                continue  # the kernel log has it, with its message: count it once
            out.append(ev)
        return out

    def _cper_events(self, state: EventState, sources: dict, problems: list) -> list[GpuEvent]:
        if not self.settings.cper:
            return []
        snap = self._snapshot
        if snap is not None:
            folder = snap / "amd-smi" / "cper"
            if not folder.is_dir():
                return []
            stdout = (folder / "stdout.txt").read_text(errors="replace") if (folder / "stdout.txt").is_file() else ""
            files = {p.name: p.read_text(errors="replace") for p in folder.glob("*.json")}
        else:
            if not self._pci.get("amd") or time.monotonic() < self._cper_retry_at:
                return []
            try:
                stdout, files = self._run_cper()
            except Unavailable as e:
                sources[CPER_SOURCE] = str(e)
                self._cper_retry_at = time.monotonic() + self.settings.cper_retry_seconds
                return []
            except (RuntimeError, TimeoutError, OSError) as e:
                text = str(e)
                sources[CPER_SOURCE] = text
                self._cper_retry_at = time.monotonic() + self.settings.cper_retry_seconds
                if not any(s in text.lower() for s in _UNSUPPORTED_CPER):
                    problems.append(("gpu.cper", f"amd-smi ras --cper failed: {text[:300]}"))
                return []
        records, parse_problems = cper_parser.parse(stdout, files)
        for p in parse_problems:
            log.warning("gpu_events: amd-smi ras --cper: %s", p)
        sources[CPER_SOURCE] = None
        listed: dict[str, list[str]] = {}
        out = []
        before = {gpu: set(fps) for gpu, fps in state.cper.items()}
        for r in records:
            gpu = str(r.gpu) if r.gpu is not None else "?"
            listed.setdefault(gpu, []).append(r.fingerprint)
            if r.fingerprint not in before.get(gpu, ()):
                out.append(cper_event(r))
        state.cper = listed
        return out

    def _run_cper(self) -> tuple[str, dict[str, str]]:
        folder = tempfile.mkdtemp(prefix="vigil-cper-")
        try:
            stdout = self._tool(["amd-smi", "ras", "--cper", "--severity", "all", "--folder", folder, "--json"],
                                self.settings.smi_timeout_seconds)
            files = {p.name: p.read_text(errors="replace") for p in Path(folder).glob("*.json")}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return stdout, files


def nvml_event(e: NvmlEvent, overrides: dict[str, str] | None = None) -> GpuEvent | None:
    """One NVML event as a GpuEvent (Xid, or a recovery-action change); None for other event types."""
    where = f"GPU {e.gpu}" if e.gpu is not None else "a GPU"
    if e.event_type & EVENT_XID:
        info = xids.lookup(e.data, "", overrides)
        mig = f" (GPU instance {e.gpu_instance})" if e.gpu_instance is not None else ""
        return GpuEvent(XID, str(e.data), info.severity, info.description, info.action, "nvml",
                        f"NVML: Xid {e.data} on {where}{mig}", f"nvml:{e.n}", pci=e.pci, gpu=e.gpu, at=e.at,
                        partition=str(e.gpu_instance) if e.gpu_instance is not None else "")
    if e.event_type & EVENT_RECOVERY_ACTION:
        info = xids.recovery_info(e.data)
        if e.data == 0:
            return GpuEvent(RESET, "ok", xids.INFO, "GPU recovery action is None again (recovered)", None, "nvml",
                            f"NVML: recovery action None on {where}", f"nvml:{e.n}", pci=e.pci, gpu=e.gpu,
                            at=e.at, recovers=True)
        return GpuEvent(XID, str(xids.RECOVERY_ACTION_CHANGED), info.severity, info.description, info.action,
                        "nvml", f"NVML: recovery action {e.data} on {where}", f"nvml:{e.n}", pci=e.pci, gpu=e.gpu,
                        at=e.at)
    return None


def cper_event(r: cper_parser.CperRecord) -> GpuEvent:
    severity, description, action = CPER_SEVERITY.get(r.severity, (xids.WARNING, "error of unknown severity",
                                                                  xids.A_SUPPORT))
    code = "boot" if r.boot else r.severity
    parts = [f"{r.severity}", f"notify {r.notify_type}" if r.notify_type else "",
             f"record {r.record_id}" if r.record_id else "", f"at {r.timestamp}" if r.timestamp else "",
             f"AFID {' '.join(map(str, r.afids))}" if r.afids else ""]
    text = f"CPER on GPU {r.gpu}: " + ", ".join(p for p in parts if p)
    return GpuEvent(CPER, code, severity, description, action, "amd-smi", text,
                    f"cper:{r.gpu}:{r.fingerprint}", gpu=str(r.gpu) if r.gpu is not None else None, at=r.epoch,
                    details={"notify_type": r.notify_type or "", "afids": list(r.afids), "record_id": r.record_id})
