"""Property tests of the GPU event parsers (issue 12, item 4): kernel log records and Xids, CPER listings.

Inputs are the real fixtures (fixtures/nodes/h100-xid79, h100-xid13, mi300x-cper: kernel logs and
`amd-smi ras --cper` output with its header files) with numbers and fields broken as a corrupted log or a
broken tool would print them. Properties: nothing raises, and the lines (records) a change did not touch give
the events they gave before: a 5,000-digit Xid on one line no longer hides a real Xid 79 on another.
"""
from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from agent.sources.gpu_events import cper, kmsg
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_JSON, WEIRD_TEXT, apply, json_changes

LOGS = {n: (FIXTURES / n / "kmsg.txt").read_text() for n in ("h100-xid79", "h100-xid13", "mi300x-cper")}
NUMBER = re.compile(r"[0-9]+")
DIGITS = st.one_of(st.sampled_from(["9" * 5000, "9" * 400, "²", "٣", "-1", "", "0" * 30, "18446744073709551616"]),
                   WEIRD_TEXT)


def events_by_line(text: str) -> dict[int, list]:
    """Line number -> the (kind, code, pci) of the events its record gives."""
    out = {}
    for n, line in enumerate(text.splitlines()):
        recs = kmsg.parse_text(line)
        out[n] = [(e.kind, e.code, e.pci) for r in recs for e in kmsg.events(r, 1_700_000_000.0)]
    return out


BASE = {n: events_by_line(t) for n, t in LOGS.items()}


@st.composite
def kmsg_samples(draw):
    node = draw(st.sampled_from(sorted(LOGS)))
    lines = LOGS[node].splitlines()
    changed = {}
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, len(lines) - 1))
        spans = [m.span() for m in NUMBER.finditer(lines[n])]
        if spans and draw(st.booleans()):
            a, b = draw(st.sampled_from(spans))  # a number on the line: the sequence, a time, an Xid code
            lines[n] = lines[n][:a] + draw(DIGITS) + lines[n][b:]
        else:
            cut = draw(st.integers(0, len(lines[n])))
            lines[n] = lines[n][:cut] + draw(WEIRD_TEXT) + lines[n][cut:]
        changed[n] = True
    return node, lines, set(changed)


def check_kmsg(sample) -> None:
    node, lines, changed = sample
    text = "\n".join(lines)
    for rec in kmsg.parse_text(text):  # the whole file at once, as a snapshot replay reads it
        kmsg.events(rec, 1_700_000_000.0)
    for line in lines:  # and record by record, as the live reader does
        rec = kmsg.parse_record(line)
        if rec is not None:
            kmsg.events(rec, None)
    for n, line in enumerate(lines):
        if n in changed or line.startswith((" ", "\t")) or n + 1 in changed:
            continue  # a continuation line belongs to the record above it
        recs = kmsg.parse_text(line)
        assert [(e.kind, e.code, e.pci) for r in recs for e in kmsg.events(r, 1_700_000_000.0)] == BASE[node][n]


@FAST
@given(kmsg_samples())
def test_kmsg_never_raises_and_other_lines_keep_their_events(sample):
    check_kmsg(sample)


def test_a_5000_digit_xid_costs_its_line_and_the_real_xid79_is_still_read():
    xid79 = next(line for line in LOGS["h100-xid79"].splitlines() if "): 79," in line)
    bad = xid79.replace("): 79,", f"): {'9' * 5000},").replace(",1843", ",1842", 1)
    recs = kmsg.parse_text(bad + "\n" + xid79)
    events = [e for r in recs for e in kmsg.events(r, None)]
    assert [(e.kind, e.code) for e in events] == [("xid", "79")]


# -- CPER -------------------------------------------------------------------------------------------------
CPER_DIR = FIXTURES / "mi300x-cper" / "amd-smi" / "cper"
STDOUT = (CPER_DIR / "stdout.txt").read_text()
FILES = {p.name: json.loads(p.read_text()) for p in CPER_DIR.glob("*.json")}
CPER_BASE = cper.parse(STDOUT, {k: json.dumps(v) for k, v in FILES.items()})[0]


@st.composite
def cper_samples(draw):
    lines = STDOUT.splitlines()
    n = draw(st.integers(0, len(lines) - 1))
    spans = [m.span() for m in NUMBER.finditer(lines[n])]
    if spans:
        a, b = draw(st.sampled_from(spans))
        lines[n] = lines[n][:a] + draw(DIGITS) + lines[n][b:]
    name = draw(st.sampled_from(sorted(FILES)))
    files = dict(FILES)
    files[name] = apply(FILES[name], draw(json_changes(FILES[name], leaf=WEIRD_JSON)))
    texts = {k: json.dumps(v) for k, v in files.items()}
    if draw(st.booleans()):
        texts[name] = draw(st.sampled_from(["[" * 100_000, "{", "", "null", '{"error_severity": ' + "9" * 5000 + "}"]))
    shape = draw(st.sampled_from(["table", "json", "dump"]))
    if shape == "json":  # the whole-JSON shapes a future amd-smi or a wrapper prints
        stdout = json.dumps([{"gpu": draw(st.one_of(st.just(0), DIGITS)), "cper": [files[name]]}])
    elif shape == "dump":  # ROCm 6.4.1's header dump
        stdout = f"Dumping CPER file header entries for GPU {draw(DIGITS)}:\n\"0\": {texts[name]}\n"
    else:
        stdout = "\n".join(lines)
    return stdout, texts, n


def check_cper(sample) -> None:
    stdout, texts, changed = sample
    records, problems = cper.parse(stdout, texts)
    assert all(isinstance(p, str) for p in problems)
    for r in records:
        assert r.gpu is None or 0 <= r.gpu <= 65535
        assert r.fingerprint.encode("utf-8", "surrogatepass")
        r.epoch  # noqa: B018 - dating a record must not raise either


@FAST
@given(cper_samples())
def test_cper_never_raises(sample):
    check_cper(sample)


def test_a_huge_gpu_number_costs_that_row():
    rows = STDOUT.replace("2026/05/27 09:12:40  0 ", "2026/05/27 09:12:40  " + "9" * 5000 + " ")
    records, _ = cper.parse(rows, {})
    assert [r.gpu for r in records] == [None, 1] and records[1].severity == CPER_BASE[1].severity


TARGETS = {
    "kmsg / Xid": (kmsg_samples(), check_kmsg),
    "CPER": (cper_samples(), check_cper),
}
