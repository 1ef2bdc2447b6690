"""Property tests of the /proc/mounts parser (issue 17; run longer by bench/fuzz_parsers.py).

Inputs: the real mount table of fixtures/nodes/node-mount-faults (an NFS, a Lustre, ext4/xfs, tmpfs) with one
to three lines broken as a corrupted or hostile table could read (a field cut, octal escapes, huge or
non-ASCII text). Properties: the parser never raises, every mount it returns has an absolute mount point and
the fields the kernel writes, and every line the change did not touch parses as before."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.sources.mounts.parsers import containing, parse_mounts
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_TEXT

TABLE = (FIXTURES / "node-mount-faults" / "proc" / "mounts").read_text().splitlines()
JUNK = st.one_of(WEIRD_TEXT, st.sampled_from(["\\", "\\0", "\\777", "\\400\\040", "\\12", " " * 20, "\t", "\x00",
                                               "/" * 5000, "a " * 3000, "\\134\\134"]))


@st.composite
def tables(draw):
    lines = list(TABLE)
    changed = set()
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, len(lines) - 1))
        cut = draw(st.integers(0, len(lines[n])))
        lines[n] = lines[n][:cut] + draw(JUNK) + lines[n][cut + draw(st.integers(0, 8)):]
        changed.add(n)
    return lines, changed


def check_mounts(sample) -> None:
    lines, changed = sample
    mounts = parse_mounts("\n".join(lines))
    for m in mounts:
        assert m.mountpoint.startswith("/"), m
        assert m.fstype and isinstance(m.options, tuple)
    for n, line in enumerate(lines):
        if n not in changed and "\n" not in line and "\r" not in line:
            assert parse_mounts(TABLE[n])[0] in mounts, f"line {n} lost"
    containing(mounts, "/mnt/datasets/x")  # never raises either


TARGETS = {"mounts / proc mounts": (tables(), check_mounts)}


@FAST
@given(tables())
def test_a_broken_line_costs_only_itself(sample):
    check_mounts(sample)
