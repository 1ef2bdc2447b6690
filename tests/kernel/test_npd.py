"""node-problem-detector rule files: the real ones load unchanged and fire on the kernel lines NPD's own test
data uses; Go RE2 patterns are translated or refused with a clear reason.

Real data: fixtures/npd/kernel-monitor.json and readonly-monitor.json are kubernetes/node-problem-detector's
config/ files (commit 6632ca67, 2026-08-22), kernel-monitor-2017.json the 2016 one (multi-line OOM pattern,
commit 532f933b), and fixtures/npd/problems/* NPD's test/kernel_log_generator/problems (Apache-2.0; cited in
fixtures/README.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.base.config import ConfigError
from agent.base.kmsg import parse_text
from agent.sources.kernel import npd
from agent.sources.kernel.rules import Engine, KernelState
from tests.kernel.helpers import NPD
from tests.support import ROOT


def fire(ruleset_files, text: str) -> dict[tuple[str, str], int]:
    sets = [npd.load_file(NPD / f) for f in ruleset_files]
    engine = Engine(sets, 300.0)
    state = KernelState()
    return engine.apply(parse_text(text), state, None, None).matches, state


def test_real_npd_kernel_monitor_is_accepted_as_is():
    rs = npd.load_file(NPD / "kernel-monitor.json")
    assert [c.type for c in rs.conditions] == ["KernelDeadlock", "XfsShutdown", "CperHardwareErrorFatal"]
    assert len(rs.rules) == 14
    assert rs.lookback == 300.0 and rs.buffer_size == 10
    # Without Vigil's keys: permanent rules are fatal, temporary ones warnings.
    assert {r.severity for r in rs.rules if r.type == "permanent"} == {"fatal"}
    assert {r.severity for r in rs.rules if r.type == "temporary"} == {"warning"}


@pytest.mark.parametrize("problem, expected", [
    ("docker_hung", {("temporary", "TaskHung"), ("permanent", "DockerHung")}),
    ("oom_kill", {("temporary", "OOMKilling")}),
    ("unregister_netdevice", {("temporary", "UnregisterNetDevice")}),
    ("null_pointer", {("temporary", "KernelOops")}),
])
def test_npd_rules_fire_on_npd_test_lines(problem, expected):
    matches, state = fire(["kernel-monitor.json"], (NPD / "problems" / problem).read_text())
    assert set(matches) == expected
    if ("permanent", "DockerHung") in expected:
        assert state.active["KernelDeadlock"].reason == "DockerHung"


def test_readonly_monitor_sets_its_condition():
    matches, state = fire(["readonly-monitor.json"], (NPD / "problems" / "readonly_filesystem").read_text())
    assert matches == {("permanent", "FilesystemIsReadOnly"): 1}
    assert "EXT4-fs (sda1): Remounting filesystem read-only" in state.active["ReadonlyFilesystem"].text


def test_a_pattern_spanning_two_lines_matches_across_records():
    """The 2016 OOM rule is "Kill process ...\\nKilled process ...": NPD's buffer joins the last lines."""
    rs = npd.load_file(NPD / "kernel-monitor-2017.json")
    oom = next(r for r in rs.rules if r.reason == "OOMKilling")
    assert oom.multiline
    # The 2016 pattern ends at file-rss (kernels before 4.x printed no shmem-rss), and NPD anchors it at the
    # end of the text: with today's trailing ", shmem-rss:..." it does not match, in NPD or here.
    text = (NPD / "problems" / "oom_kill").read_text()
    assert ("temporary", "OOMKilling") not in fire(["kernel-monitor-2017.json"], text)[0]
    old = text.replace(", shmem-rss:12345kB", "")
    assert fire(["kernel-monitor-2017.json"], old)[0].get(("temporary", "OOMKilling")) == 1
    # One line alone is not the pattern.
    assert ("temporary", "OOMKilling") not in fire(["kernel-monitor-2017.json"], old.splitlines()[1])[0]


def test_the_fatal_cper_line_sets_its_condition():
    matches, state = fire(["kernel-monitor.json"],
                          "[ 12.5] {1}[Hardware Error]: event severity: fatal\n"
                          "[ 12.6] {2}[Hardware Error]: event severity: corrected\n")
    assert matches == {("permanent", "CperHardwareErrorFatal"): 1, ("temporary", "CperHardwareErrorCorrected"): 1}
    assert set(state.active) == {"CperHardwareErrorFatal"}


def test_re2_digits_are_ascii_only():
    """RE2's \\d is [0-9]; Python's would take Arabic-Indic digits."""
    regex, _ = npd.compile_rule(r"task docker:\d+ blocked")
    assert regex.search("task docker:20744 blocked")
    assert not regex.search("task docker:٢٠٧ blocked")


@pytest.mark.parametrize("pattern, text", [
    (r"a\z", "a"), (r"\Qa.b\E", "a.b"), (r"(?<pid>\d+) died", "12 died"), (r"x[[:digit:]]+", "x42"),
    (r"(?i)remounting FILESYSTEM read-only", "Remounting filesystem read-only"), (r"[]x]+", "]x]"),
    (r"fatal$", "event severity: fatal"),
])
def test_re2_constructs_are_translated(pattern, text):
    regex, _ = npd.compile_rule(pattern)
    assert regex.search(text)


def test_dollar_is_the_end_of_the_text_as_in_re2():
    regex, _ = npd.compile_rule(r"fatal$\nnext")
    assert not regex.search("fatal\nnext")  # RE2: $ without (?m) is only the end of the text


@pytest.mark.parametrize("pattern, why", [
    (r"(a)\1", "backreferences"), (r"a\Z", r"\\Z is not RE2"), (r"\pL+", "Unicode classes"),
    (r"(?=x)y", "lookaround"), (r"a(?i)b", "flags must be at the start"), (r"a++", "possessive"),
    (r"(?U)a+", "ungreedy"), ("[a", "missing ]"), (r"(?>a)", "atomic"),
])
def test_what_python_would_read_differently_is_refused(pattern, why):
    with pytest.raises(npd.PatternError, match=why):
        npd.compile_rule(pattern)


def write(tmp_path, doc) -> str:
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(p)


@pytest.mark.parametrize("doc, message", [
    ("{not json", "not valid JSON"),
    ({"plugin": "journald", "rules": []}, "plugin: 'journald'"),
    ({"rules": [{"type": "permanent", "condition": "Nope", "reason": "R", "pattern": "x"}]},
     r"rules\[0\].condition: Nope is not declared"),
    ({"rules": [{"type": "sometimes", "reason": "R", "pattern": "x"}]}, r"rules\[0\].type"),
    ({"rules": [{"type": "temporary", "reason": "R", "pattern": r"(a)\1"}]}, r"rules\[0\].pattern: \\1"),
    ({"rules": [{"type": "temporary", "reason": "R", "pattern": "x", "severity": "huge"}]}, r"rules\[0\].severity"),
    ({"rules": [{"type": "temporary", "reason": "R"}]}, r"rules\[0\].pattern: required"),
    ({"lookback": "five minutes"}, "lookback"),
    ({"bufferSize": 10**6}, "bufferSize"),
    ({"rulez": []}, "rulez: unknown key"),
])
def test_a_bad_rule_file_names_the_file_and_key(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError, match=message) as e:
        npd.load_file(path)
    assert path in str(e.value)


def test_agent_exits_78_naming_the_rule_file_key(tmp_path):
    rules = write(tmp_path, {"rules": [{"type": "temporary", "reason": "R", "pattern": "(?=x)"}]})
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"kernel:\n  rule_files: [{rules}]\n")
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--once", "--config", str(cfg), "--only", "kernel"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 78, p.stderr
    assert "kernel.rule_files[0]" in p.stderr and "rules[0].pattern: lookaround" in p.stderr
    assert "Traceback" not in p.stderr


def test_severity_overrides_name_a_known_condition_or_reason(tmp_path):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("kernel:\n  severity: {NoSuchThing: warning}\n")
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--once", "--config", str(cfg), "--only", "kernel"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 78 and "kernel.severity.NoSuchThing" in p.stderr


def test_go_durations():
    assert npd.go_duration("5m") == 300 and npd.go_duration("1h30m") == 5400 and npd.go_duration("0") == 0
    assert npd.go_duration("1.5s") == 1.5 and npd.go_duration("10") is None and npd.go_duration("m") is None


@pytest.mark.parametrize("line", ["{1}[Hardware Error]: event severity: fatal", "[Hardware Error]: event severity: fatal",
                                  "x [Hardware Error]: event severity: fatalx", "", "fatal"])
def test_a_leading_dot_star_is_dropped_without_changing_what_matches(line):
    """NPD's CPER rules start with ".*": searched, it only costs time (a scan per start position)."""
    fast, _ = npd.compile_rule(r".*\[Hardware Error\]: event severity: fatal$")
    import re as stdre
    literal = stdre.compile(r"(?:.*\[Hardware Error\]: event severity: fatal)\Z", stdre.ASCII)
    assert bool(fast.search(line)) == bool(literal.search(line))
    assert not fast.pattern.startswith("(?:.*")
