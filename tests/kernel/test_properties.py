"""Property tests of the kernel rules: the RE2 translator and the rule engine never raise on any input, a
broken line costs only that line (the real NPD problem lines around it still fire), and the rule-file loader
either loads a file or refuses it with the project's ConfigError naming the file, never anything else.

Inputs: NPD's own kernel test lines (fixtures/npd/problems) with one line replaced by hostile text, arbitrary
pattern strings, and NPD's real rule files (fixtures/npd/*.json) plus Vigil's defaults with one to three
values replaced (wrong types, huge numbers, hostile patterns) or their text cut."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.base.kmsg import parse_text
from agent.sources.kernel import npd
from agent.sources.kernel.rules import Engine, KernelState, findings
from tests.kernel.helpers import NPD
from agent.base.config import ConfigError
from tests.support.mutate import FAST, WEIRD_JSON, WEIRD_TEXT, apply, json_changes

DEFAULTS = [npd.load_file(NPD.parent.parent / "agent" / "sources" / "kernel" / "rules" / "default.json"),
            npd.load_file(NPD / "kernel-monitor.json")]
LINES = ["INFO: task docker:20744 blocked for more than 120 seconds.",
         "EXT4-fs (sda1): Remounting filesystem read-only",
         "I/O error, dev nvme0n1, sector 8 op 0x1:(WRITE) flags 0x0 phys_seg 1 prio class 0"]
HOSTILE = st.one_of(WEIRD_TEXT, st.text(max_size=300), st.sampled_from(["x" * 100_000, "\\x00" * 50, "\n" * 50,
                                                                          "9" * 5000 + "," + "9" * 5000 + ",1,-;x"]))


def check_engine(sample) -> None:
    where, junk = sample
    lines = list(LINES)
    lines.insert(where % (len(lines) + 1), junk.replace("\n", " "))
    state = KernelState()
    matches = Engine(DEFAULTS, 300.0).apply(parse_text("\n".join(lines)), state, None, None).matches
    assert matches.get(("permanent", "DockerHung")) == 1
    assert {"ReadonlyFilesystem", "KernelDeadlock"} <= set(state.active)
    assert matches.get(("temporary", "IOError"), 0) >= 1


def check_translate(pattern: str) -> None:
    try:
        regex, _ = npd.compile_rule(pattern)
    except npd.PatternError:
        return
    assert isinstance(regex, re.Pattern)


RULE_FILES = {p.name: json.loads(p.read_text()) for p in [*sorted(NPD.glob("*.json")),
                                                           NPD.parent.parent / "agent/sources/kernel/rules/default.json"]}
PATTERNS = st.one_of(st.text(alphabet="\\()[]{}?*+|^$:<>=!PQEzZpd1a-", max_size=40),
                     st.sampled_from(["(a*)*b", "\\", "[", "(?<n>x)", "(?i)x", "x(?i)", "\\Q(\\E", "[[:digit:]]+",
                                      "a{99999}", "(" * 200 + ")" * 200]))


@st.composite
def rule_files(draw):
    name = draw(st.sampled_from(sorted(RULE_FILES)))
    doc = RULE_FILES[name]
    changes = draw(json_changes(doc, leaf=st.one_of(WEIRD_JSON, PATTERNS)))
    text = json.dumps(apply(doc, changes))
    if draw(st.integers(0, 4)) == 0:  # a file cut short, or with junk in it
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(WEIRD_TEXT) + text[cut:]
    return name, text


_TMP = Path(tempfile.mkdtemp(prefix="vigil-npd-fuzz-"))


def check_rule_file(sample) -> None:
    name, text = sample
    path = _TMP / name
    path.write_text(text, errors="surrogatepass")
    try:
        rs = npd.load_file(path)
    except ConfigError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        return
    for r in rs.rules:
        assert isinstance(r.regex, re.Pattern) and r.type in (npd.PERMANENT, npd.TEMPORARY)
        assert r.condition is None or r.condition in {c.type for c in rs.conditions}
        assert r.severity in npd.SEVERITIES
    Engine([rs], 300.0).apply(parse_text("\n".join(LINES)), KernelState(), None, None)  # a loaded file runs


def _saved_state() -> dict:
    """A real kernel.json: what the engine saves after NPD's problem lines (conditions set, episodes open)."""
    state = KernelState("boot-a")
    Engine(DEFAULTS, 300.0).apply(parse_text("\n".join(LINES * 2)), state, None, None)
    doc = state.to_json()
    assert doc["active"] and doc["episodes"]
    return doc


STATE = _saved_state()


def check_state_file(changes) -> None:
    """A corrupted or hand-edited state file: refused as a whole (the collector logs it and starts afresh:
    ValueError/TypeError, what it catches), or loaded into a state the engine and the findings can use."""
    doc = apply(STATE, changes)
    try:
        state = KernelState.from_json(json.loads(json.dumps(doc)))
    except (ValueError, TypeError):
        return
    eng = Engine(DEFAULTS, 300.0)
    p = eng.apply(parse_text("\n".join(LINES)), state, None, None)
    out = findings(eng.conditions(), state, p.shown, "n", None)
    assert all(isinstance(f.message, str) for f in out)
    json.dumps(state.to_json())  # and it saves again


TARGETS = {
    "kernel rules / state file": (json_changes(STATE, leaf=WEIRD_JSON), check_state_file),
    "kernel rules / NPD rule files": (rule_files(), check_rule_file),
    "kernel rules / lines": (st.tuples(st.integers(0, 10), HOSTILE), check_engine),
    "kernel rules / RE2 patterns": (st.one_of(st.text(max_size=60), st.text(alphabet="\\()[]{}?*+|^$:<>=!PQEzZpd1a-",
                                                                            max_size=40)), check_translate),
}


@FAST
@given(TARGETS["kernel rules / lines"][0])
def test_a_hostile_line_costs_only_itself(sample):
    check_engine(sample)


@FAST
@given(TARGETS["kernel rules / RE2 patterns"][0])
def test_any_pattern_compiles_or_is_refused_with_a_reason(pattern):
    check_translate(pattern)


@FAST
@given(rule_files())
def test_a_broken_rule_file_loads_or_is_refused_naming_the_file(sample):
    check_rule_file(sample)


@FAST
@given(TARGETS["kernel rules / state file"][0])
def test_a_corrupt_state_file_is_refused_or_usable(changes):
    check_state_file(changes)
