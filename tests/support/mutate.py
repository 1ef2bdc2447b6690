"""Hypothesis strategies that break one field of a real input at a time (issue 12, item 4).

Every property test of a parser (tests/<room>/test_properties.py) starts from the real fixtures in
fixtures/nodes and ../shared/fixtures, changes one or a few fields into something a broken driver, tool or
file system could produce, and asserts that the parser does not raise, that what it returns is still
possible, and that what the change did not touch parses as before. bench/fuzz_parsers.py runs the same
targets with many more examples.

Each room's module exposes TARGETS: name -> (strategy, check), where check(sample) raises AssertionError on a
broken property and lets any other exception out of the parser (an "escape").
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded and reproducible: a few seconds per parser at most, the same examples on every run.
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Numbers as a broken SMI prints them: impossible (negative, NaN, Inf, wider than any register), and
# digit strings that int() rejects ("²" passes str.isdigit()) or that exceed int()'s 4,300-digit limit.
WEIRD_NUMBERS = st.one_of(
    st.sampled_from([-1, -2, -273.15, -300, 2**64, 2**64 - 1, 10**400, -(10**401), 0, 1, 1e308, 1.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
)
WEIRD_TEXT = st.one_of(
    st.sampled_from(["²", "³: ACTIVE", "²: ACTIVE", "٣", "\ud800", "0000:0c:00.0\ud800", "9" * 400, "9" * 5000,
                     "-1", "-0", "N/A", "", " ", "nan", "inf", "-inf", "0x" + "f" * 40, "1e999", "[Not Supported]",
                     "4: ACTIVE", "100 Gb/sec (4X EDR)", "9" * 400 + " Gb/sec", "-5 C", "1" * 400 + " W"]),
    st.text(max_size=30),
)
WEIRD_LEAF = st.one_of(WEIRD_NUMBERS, WEIRD_TEXT, st.none(), st.booleans(),
                       st.builds(lambda v, u: {"value": v, "unit": u}, st.one_of(WEIRD_NUMBERS, WEIRD_TEXT),
                                 st.sampled_from(["C", "W", "mW", "MB", "GT/s", "%", "", "N/A"])))


def _deep(n: int) -> Any:
    """A list nested n deep (deeper text, 100,000 levels, is each text parser's own test)."""
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


# The values of issue 12 that broke a parser, tried often: hypothesis picks a one_of branch evenly, so half
# of all changes are one of these, the other half anything WEIRD_LEAF and containers make.
KNOWN_BAD = st.sampled_from([10**400, -(10**401), "²", "9" * 5000, "\ud800", math.nan, math.inf, -2, -300,
                             {"value": 10**401, "unit": "W"}, {"value": -273.15, "unit": "C"},
                             {"value": -2, "unit": ""}])
WEIRD_JSON = st.one_of(KNOWN_BAD, st.one_of(WEIRD_LEAF, st.lists(WEIRD_LEAF, max_size=3),
                                            st.dictionaries(st.text(max_size=8), WEIRD_LEAF, max_size=3),
                                            st.integers(1, 200).map(_deep)))


# Text that XML can carry (no surrogates, no control characters: nvidia-smi's output is decoded bytes).
XML_TEXT = st.one_of(
    st.sampled_from(["9" * 400, "9" * 400 + " C", "-300 C", "-273.15 C", "-2", "-16x", "1e999 W", "-5 %", "250 %"]),
    st.sampled_from(["²", "٣", "nan", "inf", "-123 W", "-1 MiB", "9" * 400 + " MiB", "N/A", "", "Yes", "No"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indexes) to a value inside doc, containers included."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def put(doc: Any, path: tuple, value: Any) -> Any:
    """A copy of doc with the value at path replaced."""
    doc = copy.deepcopy(doc)
    parent = get(doc, path[:-1])
    parent[path[-1]] = value
    return doc


class Change(NamedTuple):
    path: tuple
    value: Any


def json_changes(doc: Any, allowed: Callable[[tuple], bool] = lambda p: True, leaf=WEIRD_JSON,
                 max_changes: int = 3) -> st.SearchStrategy[list[Change]]:
    """1..max_changes changes of values inside doc (only at paths `allowed` accepts)."""
    where = [p for p in paths(doc) if allowed(p)]
    return st.lists(st.builds(Change, st.sampled_from(where), leaf), min_size=1, max_size=max_changes)


def apply(doc: Any, changes: list[Change]) -> Any:
    """A copy of doc with every change made (one that an earlier change cut off is skipped)."""
    doc = copy.deepcopy(doc)
    for c in changes:
        try:
            get(doc, c.path[:-1])[c.path[-1]] = copy.deepcopy(c.value)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def finite_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
