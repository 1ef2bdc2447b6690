"""What counts as a possible value (DESIGN §0 "Never fail open"), shared by every parser.

An impossible value (a negative counter, a temperature below absolute zero, NaN, Inf, an integer wider than
any hardware register) is invalid: not zero and not ok. The parsers keep numbers as read; these predicates
decide, and the source's model turns a failed one into None plus an Invalid record naming the field, which its
rules report as an unknown finding.

Text to numbers: `ascii_int` is the one way a parser turns digits into an int. Python's int() takes other
scripts' digits ("٣") and `str.isdigit()` says yes to "²", which int() then rejects; int() also raises on more
than 4,300 digits. Neither may reach a parser: a field that is not a bounded ASCII number is None.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

COUNTER_MAX = 2**64 - 1  # the widest hardware counter (a u64); anything above overflowed somewhere
ABSOLUTE_ZERO_C = -273.15
# No sensor on a working GPU reads this hot (solder melts near 220 C, silicon at 1414 C): past it the sensor
# or the parser is broken, and the reading says nothing about the GPU.
TEMPERATURE_MAX_C = 1000.0
POWER_MAX_W = 100_000.0  # a whole 8-GPU node draws about 10 kW; one GPU reading 100 kW is not a reading
PCIE_WIDTH_MAX = 64
PCIE_SPEED_MAX_GTS = 1000.0
INDEX_MAX = 65535  # a GPU index, a port number, a minor number: small by construction
MAX_DIGITS = 20  # 2**64 has 20 decimal digits
_ASCII_INT = re.compile(r"[+-]?[0-9]{1,%d}" % MAX_DIGITS, re.ASCII)
_SHOWN = 40  # characters of an invalid value quoted in a finding


def ascii_int(text: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    """An int from a str of at most 20 ASCII digits (an int passes through), within [lo, hi] when given;
    None for anything else. Never raises."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        n = text
    elif isinstance(text, str) and _ASCII_INT.fullmatch(text.strip()):
        n = int(text.strip())
    else:
        return None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        return None
    return n


def index(v: Any) -> int | None:
    """A small non-negative identifier (GPU index, port, minor number) from an int or ASCII digits."""
    return ascii_int(v, 0, INDEX_MAX)


def to_float(v: Any) -> float | None:
    """float(v) for an int or float, keeping the sign of an int too wide for a float as +-Inf (so that the
    validator sees it overflowed); None for anything else."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def finite(v: Any) -> bool:
    f = to_float(v)
    return f is not None and math.isfinite(f)


def in_range(v: Any, lo: float, hi: float) -> bool:
    """Finite and within [lo, hi]."""
    return finite(v) and lo <= v <= hi


def counter(v: Any) -> bool:
    """A count of events or things: a whole number, 0 <= n <= 2**64-1."""
    return finite(v) and v >= 0 and v <= COUNTER_MAX and float(v).is_integer()


def temperature(v: Any) -> bool:
    """Celsius above absolute zero (strictly: no sensor reads it) and below TEMPERATURE_MAX_C."""
    return finite(v) and ABSOLUTE_ZERO_C < v <= TEMPERATURE_MAX_C


def ratio(v: Any) -> bool:
    return in_range(v, 0.0, 1.0)


def shown(v: Any) -> str:
    """An invalid value as a finding quotes it: bounded (a 400-digit number is shown by its length)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**_SHOWN:
        digits = int(abs(v).bit_length() * math.log10(2)) + 1  # str() of a huge int raises past 4,300 digits
        return f"{'-' if v < 0 else ''}<{digits}-digit number>"
    text = repr(v) if isinstance(v, str) else str(v)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def safe_text(s: str) -> str:
    """Valid UTF-8 text: a lone surrogate (from JSON "\\ud800", or a non-UTF-8 file name as os.listdir
    returns it) becomes "?". Label values, --once tables and JSON go through this before being encoded."""
    return s if s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Invalid:
    """One field whose value was impossible. `key` says which check needed it ("ecc.uncorrectable",
    "temperature.edge", "power"), `field` names it for a person ("ecc uncorrectable (dram)"), `value` is
    what was read (shown bounded)."""

    key: str
    field: str
    value: str

    @property
    def message(self) -> str:
        return f"invalid value {self.value} for {self.field}"
