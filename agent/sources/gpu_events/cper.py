"""AMD CPER records (UEFI Common Platform Error Records) from `amd-smi ras --cper`.

What amd-smi really prints (ROCm/amdsmi amdsmi_cli, 7.1 tree; docs/how-to/amdsmi-cli-tool.md "Listing CPER
entries"; AMD's device-metrics-exporter docs; the amdsmi CHANGELOG for ROCm 6.4.1):

* amd-smi 26.x (ROCm 7.x), without --folder: a warning line, then a table; `--json` does not change it:
      WARNING:No CPER files will be dumped unless --folder=<folder_name> is specified and cper entries exist.
      timestamp            gpu_id  severity
      2025/10/07 09:58:04  0       FATAL
* with --folder DIR: the table gains `file_name` and `list of afids` columns, and DIR gets one binary
  `<sev>-<n>.cper` and one `<sev>-<n>.json` per record, the JSON being the record header:
      {"error_severity": "fatal", "notify_type": "MCE", "timestamp": "2000/06/27 10:45:13", "signature": "CPER",
       "revision": 256, "signature_end": "0xffffffff", "sec_cnt": 1, "record_length": 376,
       "platform_id": "111102-G40307-0C", "creator_id": "136c692517001839", "record_id": "f0000031", ...}
* ROCm 6.4.1 printed the headers themselves: `Dumping CPER file header entries for GPU 0:` then `"0": {...}`.
Severity words: FATAL, NONFATAL-UNCORRECTED, NONFATAL-CORRECTED, and BOOT for a fatal record whose notify type is
BOOT: the driver writes those at boot for errors the hardware kept from before the reboot.

Record identity: amdgpu's record_id is "<socket>:<counter>" ("%d:%X", decimal "%d" before), the counter
restarting at every driver load; timestamps come from the wall clock and may be nonsense (the docs' own example
is dated 2000/06/27). A record is therefore identified by (record_id, timestamp), falling back to (timestamp,
severity, ordinal) when only the table is available. See state.py for the cursor built on that.
"""
from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass

from agent.base.validate import ascii_int, index as gpu_number, shown

FATAL_SEV, UNCORRECTED, CORRECTED = "fatal", "non_fatal_uncorrected", "non_fatal_corrected"
_TABLE_SEVERITY = {"FATAL": FATAL_SEV, "BOOT": FATAL_SEV, "NONFATAL-UNCORRECTED": UNCORRECTED,
                   "NONFATAL-CORRECTED": CORRECTED, "UNKNOWN": "unknown"}
# ASCII digits only ([0-9]: int() takes other scripts' digits); GPU numbers are then bounded (gpu_number).
_ROW = re.compile(r"^(?P<ts>[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2})\s+(?P<gpu>[0-9]+)\s+"
                  r"(?P<sev>[A-Z-]+)(?:\s+(?P<file>\S+\.cper))?(?:\s+(?P<afids>[0-9 ]+|Error fetching AFIDs))?\s*$")
_DUMP_HEADER = re.compile(r"Dumping CPER file header entries for GPU ([0-9]+):")
_ENTRY = re.compile(r'"([0-9]+)"\s*:\s*(\{.*?\})', re.DOTALL)
AFID_MAX = 2**32 - 1
EARLIEST_PLAUSIBLE = calendar.timegm((2020, 1, 1, 0, 0, 0))  # before that, the record's clock was not set


@dataclass(frozen=True)
class CperRecord:
    gpu: int | None
    severity: str  # fatal | non_fatal_uncorrected | non_fatal_corrected | unknown
    notify_type: str | None = None  # MCE, CMC, BOOT, ...
    timestamp: str | None = None  # as printed, "YYYY/MM/DD HH:MM:SS" (UTC: the driver uses the real-time clock)
    record_id: str | None = None
    creator_id: str | None = None
    afids: tuple[int, ...] = ()
    file: str | None = None
    ordinal: int = 0  # among records of this GPU with the same timestamp and severity, in listing order

    @property
    def boot(self) -> bool:
        """Written at boot for an error from before it (the table says BOOT)."""
        return (self.notify_type or "").upper() == "BOOT"

    @property
    def fingerprint(self) -> str:
        if self.record_id:
            return f"{self.record_id}|{self.timestamp or ''}"
        return f"{self.timestamp or ''}|{self.severity}|#{self.ordinal}"

    @property
    def epoch(self) -> float | None:
        return timestamp_epoch(self.timestamp)


def timestamp_epoch(ts: str | None) -> float | None:
    """"2025/04/08 18:23:44" (UTC) -> epoch seconds; None when absent, malformed, or before 2020 (clock unset)."""
    if not ts:
        return None
    try:
        value = float(calendar.timegm(time.strptime(ts.strip(), "%Y/%m/%d %H:%M:%S")))
    except ValueError:
        return None
    return value if value >= EARLIEST_PLAUSIBLE else None


def _severity(value: object) -> str:
    s = value.strip() if isinstance(value, str) else ""
    if s.upper() in _TABLE_SEVERITY:
        return _TABLE_SEVERITY[s.upper()]
    s = s.lower().replace("-", "_").replace("amdsmi_cper_sev_", "")
    return s if s in (FATAL_SEV, UNCORRECTED, CORRECTED) else "unknown"


def _from_header(gpu: int | None, header: dict, file: str | None = None, afids: tuple[int, ...] = ()) -> CperRecord:
    def text(key: str) -> str | None:
        v = header.get(key)
        if v is None or isinstance(v, (dict, list)):  # a nested value is not a header field
            return None
        t = (v if isinstance(v, str) else shown(v)).strip()  # str() of a 5,000-digit int raises
        return t[:200] if t not in ("", "N/A") else None

    raw_afids = header.get("afids") or header.get("afid")
    if not afids and isinstance(raw_afids, list):
        afids = tuple(n for a in raw_afids if (n := ascii_int(a, 0, AFID_MAX)) is not None)
    return CperRecord(gpu, _severity(header.get("error_severity")), text("notify_type"), text("timestamp"),
                      text("record_id"), text("creator_id"), afids, file)


def _gpu_of(d: dict) -> int | None:
    for key in ("gpu", "gpu_id"):
        n = gpu_number(d.get(key))
        if n is not None:
            return n
    return None


def _loads(text: str) -> object:
    """json.loads, with nesting too deep for the decoder reported as the ValueError it is."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def parse(stdout: str, files: dict[str, str] | None = None) -> tuple[list[CperRecord], list[str]]:
    """Records from amd-smi's stdout and, when it ran with --folder, the header JSON files (name -> text).
    Returns (records, problems); never raises on what the tool prints."""
    files = files or {}
    problems: list[str] = []
    if _DUMP_HEADER.search(stdout):
        records = _parse_dump(stdout, problems)
    else:
        records = _parse_json_document(stdout)
        if records is None:
            records = _parse_table(stdout, files, problems)
    return _number(records), problems


def _parse_table(stdout: str, files: dict[str, str], problems: list[str]) -> list[CperRecord]:
    out: list[CperRecord] = []
    for line in stdout.splitlines():
        m = _ROW.match(line.strip())
        if not m:
            continue
        afids = tuple(n for a in (m.group("afids") or "").split() if (n := ascii_int(a, 0, AFID_MAX)) is not None)
        # A GPU number past any node's (a garbled row) costs that row's GPU, not the listing.
        gpu, sev_word, file = gpu_number(m.group("gpu")), m.group("sev"), m.group("file")
        header = None
        if file:
            text = files.get(file[: -len(".cper")] + ".json")
            if text is not None:
                try:
                    header = _loads(text)
                except ValueError as e:
                    problems.append(f"{file[:-5]}.json: not JSON ({e})")
        if isinstance(header, dict):
            rec = _from_header(gpu, header, file, afids)
        else:
            rec = CperRecord(gpu, _TABLE_SEVERITY.get(sev_word, "unknown"), "BOOT" if sev_word == "BOOT" else None,
                             m.group("ts"), afids=afids, file=file)
        out.append(rec)
    return out


def _parse_dump(stdout: str, problems: list[str]) -> list[CperRecord]:
    """ROCm 6.4.1: per GPU, "Dumping CPER file header entries for GPU N:" and `"i": {header}` blocks."""
    out: list[CperRecord] = []
    parts = _DUMP_HEADER.split(stdout)
    for gpu_text, body in zip(parts[1::2], parts[2::2]):
        for m in _ENTRY.finditer(body):
            try:
                header = _loads(m.group(2))
            except ValueError as e:
                problems.append(f"GPU {gpu_text[:20]} entry {m.group(1)[:20]}: not JSON ({e})")
                continue
            if isinstance(header, dict):
                out.append(_from_header(gpu_number(gpu_text), header))
    return out


def _parse_json_document(stdout: str) -> list[CperRecord] | None:
    """A whole-JSON stdout (a future amd-smi, or a wrapper's output): a list of headers with a gpu/gpu_id key,
    {"gpu_data": [...]}, or {gpu: {i: header}}. None when stdout is not one JSON document."""
    start = min((i for i in (stdout.find("["), stdout.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        doc = _loads(stdout[start:])
    except ValueError:
        return None
    if isinstance(doc, dict) and "gpu_data" in doc:
        doc = doc["gpu_data"]
    out: list[CperRecord] = []
    if isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict):
                entries = item.get("cper") or item.get("entries")
                if isinstance(entries, (list, dict)):
                    values = entries.values() if isinstance(entries, dict) else entries
                    out += [_from_header(_gpu_of(item), e) for e in values if isinstance(e, dict)]
                elif "error_severity" in item:
                    out.append(_from_header(_gpu_of(item), item))
        return out
    if isinstance(doc, dict):
        for gpu, entries in doc.items():
            if isinstance(entries, dict) and gpu_number(gpu) is not None:
                out += [_from_header(gpu_number(gpu), e) for e in entries.values() if isinstance(e, dict)]
        return out or None
    return None


def _number(records: list[CperRecord]) -> list[CperRecord]:
    """Give records that share GPU, timestamp and severity their ordinal, so table-only records stay distinct."""
    seen: dict[tuple, int] = {}
    out = []
    for r in records:
        k = (r.gpu, r.timestamp, r.severity, r.record_id)
        n = seen.get(k, 0)
        seen[k] = n + 1
        out.append(r if n == 0 else CperRecord(r.gpu, r.severity, r.notify_type, r.timestamp, r.record_id,
                                               r.creator_id, r.afids, r.file, n))
    return out
