"""`nvme smart-log /dev/nvmeX -o json` (nvme-cli), the NVMe SMART / Health Information log page (02h).

Shapes across nvme-cli versions (src/nvme-print-json.c json_smart_log):
  * critical_warning is an integer (bit field), or with `--verbose` an object {"value": N, "available_spare":
    0|1, "temp_threshold": ..., "reliability_degraded": ..., "ro": ..., "vmbu_failed": ..., "pmr_ro": ...};
  * the 128-bit counters (media_errors, data_units_*, power_on_hours ...) are JSON integers in 1.x and may be
    strings of digits in 2.x (obj_add_uint128);
  * temperature is the composite temperature in Kelvin; avail_spare, spare_thresh, percent_used are percent
    (percent_used may exceed 100); older nvme-cli names nothing differently in JSON, the text output's
    "available_spare" / "percentage_used" spellings are accepted too.
One bad field costs that field: it is None and named in `invalid`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent.base.validate import COUNTER_MAX, ascii_int

ALIASES = {"avail_spare": ("avail_spare", "available_spare"),
           "spare_thresh": ("spare_thresh", "available_spare_threshold"),
           "percent_used": ("percent_used", "percentage_used")}
BITS = {0: "available spare below threshold", 1: "temperature outside its threshold",
        2: "NVM subsystem reliability degraded", 3: "media placed in read-only mode",
        4: "volatile memory backup failed", 5: "persistent memory region read-only"}
MAX_BYTES = 1 << 20


@dataclass
class SmartLog:
    critical_warning: int | None = None
    temperature_k: int | None = None
    avail_spare: int | None = None
    spare_thresh: int | None = None
    percent_used: int | None = None
    media_errors: int | None = None
    num_err_log_entries: int | None = None
    power_on_hours: int | None = None
    invalid: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        cw = self.critical_warning or 0
        return [text for bit, text in BITS.items() if cw & (1 << bit)]


def _int(doc: dict, key: str, hi: int, invalid: list[str]) -> int | None:
    for name in ALIASES.get(key, (key,)):
        if name not in doc:
            continue
        v = doc[name]
        if isinstance(v, dict):
            v = v.get("value")
        n = ascii_int(v, 0, hi) if not isinstance(v, float) else None
        if n is None:
            invalid.append(f"{name}={str(v)[:24]}")
        return n
    return None


def _json_int(digits: str) -> int | str:
    return int(digits) if len(digits) <= 24 else digits


def parse_smart_log(text: str) -> SmartLog:
    """Raises ValueError when the output is not a JSON object (the tool's output is unusable); a bad field costs
    only that field."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"smart-log output larger than {MAX_BYTES} bytes")
    try:
        # A number too long for any counter stays text (ascii_int refuses it: that field is invalid); int() would
        # raise past 4,300 digits and lose the whole log for one field.
        doc: Any = json.loads(text, parse_int=_json_int)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"smart-log output is not JSON: {str(e)[:80]}") from None
    if not isinstance(doc, dict):
        raise ValueError("smart-log output is not a JSON object")
    s = SmartLog()
    s.critical_warning = _int(doc, "critical_warning", 255, s.invalid)
    s.temperature_k = _int(doc, "temperature", 65535, s.invalid)
    s.avail_spare = _int(doc, "avail_spare", 100, s.invalid)
    s.spare_thresh = _int(doc, "spare_thresh", 100, s.invalid)
    s.percent_used = _int(doc, "percent_used", 255, s.invalid)
    s.media_errors = _int(doc, "media_errors", COUNTER_MAX, s.invalid)
    s.num_err_log_entries = _int(doc, "num_err_log_entries", COUNTER_MAX, s.invalid)
    s.power_on_hours = _int(doc, "power_on_hours", COUNTER_MAX, s.invalid)
    return s
