"""Property tests of the AER sysfs file parser (issue 17; run longer by bench/fuzz_parsers.py).

Inputs: the real aer_dev_* files of fixtures/nodes/node-pcie-aer (the kernel's "<type> <count>" lines and
TOTAL_ERR_*) with numbers and lines broken as a buggy driver or a corrupted read could give them.
Properties: never raises, every count is a possible u64, a broken number is named in `invalid`, and the lines
the change did not touch keep their counts."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agent.base.validate import COUNTER_MAX
from agent.sources.pcie.sysfs import parse_counts
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_TEXT

FILES = sorted((FIXTURES / "node-pcie-aer" / "sys" / "devices").rglob("aer_dev_*"))
TEXTS = {str(p.relative_to(FIXTURES)): p.read_text() for p in FILES}
NUMBER = re.compile(r"[0-9]+")
DIGITS = st.one_of(st.sampled_from(["9" * 5000, "9" * 21, "18446744073709551616", "-1", "²", "٣", "0x10", "1e3", ""]),
                   WEIRD_TEXT)


@st.composite
def files(draw):
    name = draw(st.sampled_from(sorted(TEXTS)))
    lines = TEXTS[name].splitlines()
    changed = set()
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, len(lines) - 1))
        m = NUMBER.search(lines[n])
        if m and draw(st.booleans()):
            lines[n] = lines[n][:m.start()] + draw(DIGITS) + lines[n][m.end():]
        else:
            cut = draw(st.integers(0, len(lines[n])))
            lines[n] = lines[n][:cut] + draw(WEIRD_TEXT) + lines[n][cut:]
        changed.add(n)
    return name, lines, changed


def check_aer(sample) -> None:
    name, lines, changed = sample
    invalid: list[str] = []
    counts = parse_counts("\n".join(lines), name, invalid)
    assert all(isinstance(v, int) and 0 <= v <= COUNTER_MAX for v in counts.values()), counts
    before = parse_counts(TEXTS[name], name, [])
    touched = {ln.split()[0] for n, ln in enumerate(TEXTS[name].splitlines()) if n in changed and ln.split()}
    for n, line in enumerate(lines):
        key = line.split()[0] if line.split() else None
        if n not in changed and key in before and key not in touched and "\n" not in line and "\r" not in line \
                and not any(c in line for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            assert counts.get(key) == before[key], f"{key} changed"


TARGETS = {"pcie / aer_dev_* files": (files(), check_aer)}


@FAST
@given(files())
def test_a_broken_counter_costs_only_itself(sample):
    check_aer(sample)
