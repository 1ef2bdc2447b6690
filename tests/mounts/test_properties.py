"""Property tests of the /proc/mounts parser (issue 17; run longer by bench/fuzz_parsers.py).

Inputs: the real mount table of fixtures/nodes/node-mount-faults (an NFS, a Lustre, ext4/xfs, tmpfs) with one
to three lines broken as a corrupted or hostile table could read (a field cut, octal escapes, huge or
non-ASCII text). Properties: the parser never raises, every mount it returns has an absolute mount point and
the fields the kernel writes, and every line the change did not touch parses as before."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.base.collector import Context
from agent.base.config import Expectations
from agent.base.findings import UNHEALTHY, UNKNOWN
from agent.base.roots import Roots
from agent.sources.mounts.collector import MountsCollector, MountsSettings
from agent.sources.mounts.parsers import containing, parse_mounts
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_JSON, WEIRD_TEXT, apply, json_changes

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


# The replay side: a snapshot's mounts/probes.json (what `agent snapshot` recorded) with values broken.
PROBES = json.loads((FIXTURES / "node-mount-faults" / "mounts" / "probes.json").read_text())
_SNAP = Path(tempfile.mkdtemp(prefix="vigil-mounts-fuzz-"))
shutil.copytree(FIXTURES / "node-mount-faults", _SNAP / "node", dirs_exist_ok=True)


def check_probes(changes) -> None:
    doc = apply(PROBES, changes)
    (_SNAP / "node" / "mounts" / "probes.json").write_text(json.dumps(doc))
    c = MountsCollector(MountsSettings(), Context(Roots.from_snapshot(_SNAP / "node"), "n", Expectations()))
    out = c.evaluate(c.read(), None, None)
    touched = {ch.path[0] for ch in changes}
    for f in out.findings:
        assert isinstance(f.message, str)
        if f.entity not in touched and f.entity in PROBES:  # an untouched mount point is judged as before
            assert f.status == BASE[(f.check, f.entity)], (f.check, f.entity, f.status)
    for fam in out.metrics:
        for _, _, v in fam.samples:
            assert v == v and abs(v) != float("inf"), fam.name


def _base() -> dict:
    (_SNAP / "node" / "mounts" / "probes.json").write_text(json.dumps(PROBES))
    c = MountsCollector(MountsSettings(), Context(Roots.from_snapshot(_SNAP / "node"), "n", Expectations()))
    return {(f.check, f.entity): f.status for f in c.evaluate(c.read(), None, None).findings}


BASE = _base()
assert {BASE[("mounts.responsive", "/mnt/datasets")]} == {UNHEALTHY} and UNKNOWN not in BASE.values()

TARGETS = {"mounts / proc mounts": (tables(), check_mounts),
           "mounts / snapshot probes.json": (json_changes(PROBES, leaf=WEIRD_JSON), check_probes)}


@FAST
@given(tables())
def test_a_broken_line_costs_only_itself(sample):
    check_mounts(sample)


@FAST
@given(TARGETS["mounts / snapshot probes.json"][0])
def test_a_broken_recorded_probe_costs_only_its_mount(changes):
    check_probes(changes)
