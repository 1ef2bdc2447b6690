"""Property tests of the kernel rules: the RE2 translator and the rule engine never raise on any input, and a
broken line costs only that line (the real NPD problem lines around it still fire).

Inputs: NPD's own kernel test lines (fixtures/npd/problems) with one line replaced by hostile text, and
arbitrary pattern strings."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agent.base.kmsg import parse_text
from agent.sources.kernel import npd
from agent.sources.kernel.rules import Engine, KernelState
from tests.kernel.helpers import NPD
from tests.support.mutate import FAST, WEIRD_TEXT

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


TARGETS = {
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
