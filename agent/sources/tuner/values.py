"""Sysctl values as the kernel prints them: one or more whitespace-separated fields, each an integer
("262144", "-1", "4096\t87380\t16777216") or a word ("bbr"). Pure functions only."""
from __future__ import annotations

import math
import re

Field = int | str
Value = tuple[Field, ...]

_INT = re.compile(r"-?[0-9]+")  # ASCII: \d also matches "²", which int() refuses


def parse(text: str) -> Value:
    """The kernel separates fields with tabs (tcp_rmem) or spaces; both are accepted on write."""
    return tuple(int(f) if _INT.fullmatch(f) else f for f in text.split())


def fmt(value: Value) -> str:
    """The form written to the kernel and shown to people: fields joined by one space."""
    return " ".join(str(f) for f in value)


def is_numeric(value: Value) -> bool:
    return bool(value) and all(isinstance(f, int) for f in value)


def field_labels(value: Value) -> list[str]:
    """The `field` label of vigil_sysctl_value/desired: "" for a single value, "0", "1", "2" ... by position
    for multi-field keys (positions, not names: tcp_rmem is min/default/max but tcp_mem is min/pressure/max)."""
    return [""] if len(value) == 1 else [str(i) for i in range(len(value))]


def plain(value: Value | None) -> int | str | None:
    """A JSON-friendly form for findings: the integer of a single numeric value, else the text."""
    if value is None:
        return None
    if len(value) == 1 and isinstance(value[0], int):
        return value[0]
    return fmt(value)


# -- file limits: a (soft, hard) pair where math.inf is "unlimited" ------------------------------------------
UNLIMITED = math.inf


def fmt_limit(n: float) -> str:
    return "unlimited" if n == UNLIMITED else str(int(n))


def fmt_limits(pair: tuple[float, float]) -> str:
    return f"soft {fmt_limit(pair[0])} hard {fmt_limit(pair[1])}"
