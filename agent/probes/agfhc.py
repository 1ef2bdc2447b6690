"""AMD GPU Field Health Check: `agfhc -r <recipe> -o <dir>`, one finding per test the recipe ran.

Built only on what AMD publishes of AGFHC (the tool itself is under NDA; fixtures/probes/README.md lists the
sources and which fixtures are published and which constructed):
- ROCm/system-acceptance-docs docs/common/system-validation.md (commit 53b24b9): the command
  (`/opt/amd/agfhc/agfhc -r all_lvl5 -o /tmp/agfhc_output`), its end (`Program exiting with return code
  AGFHC_SUCCESS [0]`), "if any test fails, you will see a FAIL message ... and failed tests will be listed",
  exit status 0 only when every test passed, and a results.json in the output directory with
  `overall_result` and `tests` (`{"name": ..., "result": "PASS"}`).
- ROCm/cvs cvs/tests/health/agfhc_cvs.py (commit c228682) and csp_qual_agfhc.py (commit 743d405), AMD's own
  harness: a run passes only with `code AGFHC_SUCCESS` in its output and no FAIL|ERROR|ABORT anywhere in it;
  csp_qual reads `Log directory: <dir>` from the output and requires `"total_failed": 0` in <dir>/results.json.
- One published console run (AGFHC 1.23.2, all_lvl1 on 8 x MI350X): per test `PASS: <test>-<i>-<j>
  [elapsed/expected]`, and `Tests: 5 Total, 5 Executed, 0 Skipped | All Tests Passed`.

Verdict (never a pass on less than all of it):
- pass: exit 0, the AGFHC_SUCCESS line, at least one test line and every one PASS, as many as the summary says
  were executed with none skipped, no other FAIL/ERROR/ABORT line, and results.json (when there is one) with
  total_failed 0 and a passing overall_result and tests;
- fail: a test line says FAIL, or results.json says a test failed (total_failed > 0, a test FAIL): the tests
  are named, with what the line says beyond the name (a GPU, where AGFHC prints one: its numbering is AGFHC's,
  so the finding stays on the node);
- unknown: anything else (a timeout, a non-zero exit without a FAIL line, no success line, an ERROR or ABORT
  line, a results.json that cannot be read, `--recipe-info`'s "0 Executed").
AGFHC cannot be pointed at some GPUs (nothing published says how): it needs every GPU of the node.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from agent.base import tools
from agent.base.findings import bad, ok

from .runner import COMPONENT, Parsed, Probe, ProbeContext, Unrunnable

CHECK = "probe.agfhc"
DEFAULT_PATH = "/opt/amd/agfhc/agfhc"  # where AGFHC's installer puts it (system-validation.md)
MAX_LINES = 200_000
MAX_TESTS = 256
MAX_RESULTS_BYTES = 4 << 20

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# `PASS: gfx_bf16ri-1-1   [00:01:08/00:01:20]`: the verdict, the test, its iteration (always printed: a line
# without one, `FAIL: cannot open ...`, is not a test's verdict), the rest of the line
_TEST = re.compile(r"^(PASS|FAIL)(?:ED)?\s*:\s*([A-Za-z][A-Za-z0-9_]{0,63})-\d+-\d+(?:\s+(.*))?$", re.I)
_SUCCESS = re.compile(r"\bcode\s+AGFHC_SUCCESS\b", re.I)
_EXIT = re.compile(r"return code\s+(AGFHC_\w+)\s*\[\s*(-?\d+)\s*\]", re.I)
_BAD_WORD = re.compile(r"FAIL|ERROR|ABORT", re.I)  # AMD's harness's own scan
_COUNTS = re.compile(r"Tests:\s*(\d+)\s+Total,\s*(\d+)\s+Executed,\s*(\d+)\s+Skipped", re.I)
_LOGDIR = re.compile(r"^\s*Log directory:\s*(\S+)\s*$", re.I)
_PASSING = ("PASS", "PASSED", "SUCCESS")


class Agfhc(Probe):
    name = "agfhc"
    tools = ("agfhc",)
    what = ("AMD GPU Field Health Check recipe: all_lvl1 about 5-30 min (quick), all_lvl5 about 2 h (full); every "
            "GPU of the node fully busy")

    def find(self, ctx: ProbeContext) -> str | None:
        found = super().find(ctx)
        if found is None and not ctx.settings.agfhc.path and os.access(DEFAULT_PATH, os.X_OK):
            return DEFAULT_PATH  # its installer's place, off PATH
        return found

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        out = output_dir(ctx)
        try:
            # A fresh directory: a results.json left by an earlier run must never be read as this run's.
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
        except OSError as e:
            raise Unrunnable(f"cannot prepare the AGFHC output directory {out}: {e.strerror or e}") from None
        return [([binary, "-r", ctx.settings.agfhc.recipe(ctx.level), "-o", out], {})]

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        out = output_dir(ctx)
        return parse(done.stdout, done.returncode, ctx.node, results_file(done.stdout, out),
                     ctx.settings.agfhc.recipe(ctx.level), logs=out)


def output_dir(ctx: ProbeContext) -> str:
    return os.path.join(ctx.settings.state_dir, f"agfhc-{ctx.level}")


def results_file(text: str, out: str) -> str | None:
    """The run's results.json: in the `Log directory:` AGFHC printed when that lies in `out` (AMD's harness
    reads it there), else the one file under `out` (a fresh directory per run). None: there is none."""
    root = os.path.realpath(out)
    printed = [m.group(1) for line in text.splitlines()[-200:] if (m := _LOGDIR.match(_ANSI.sub("", line)))]
    for d in reversed(printed):
        real = os.path.realpath(d)
        if (real == root or real.startswith(root + os.sep)) and os.path.isfile(os.path.join(real, "results.json")):
            return os.path.join(real, "results.json")
    found = []
    for base, dirs, files in os.walk(root):
        if base.count(os.sep) - root.count(os.sep) >= 2:
            dirs[:] = []
        if "results.json" in files:
            found.append(os.path.join(base, "results.json"))
    return found[0] if len(found) == 1 else None


def read_results(path: str | None) -> tuple[dict | None, str]:
    """results.json as a mapping, or why it cannot be read ("" with None: there is none)."""
    if path is None:
        return None, ""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RESULTS_BYTES + 1)
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    if len(raw) > MAX_RESULTS_BYTES:
        return None, f"{path} is over {MAX_RESULTS_BYTES} bytes"
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as e:
        return None, f"{path} is not JSON ({e})"
    if not isinstance(doc, dict):
        return None, f"{path} is not a JSON object"
    return doc, ""


def _check(test: str) -> str:
    return f"{CHECK}.{test.lower()}"


def parse(text: str, returncode: int, node: str, results_path: str | None = None, recipe: str = "",
          logs: str = "") -> Parsed:
    """Findings from AGFHC's console output (and its results.json, when `results_path` names one); `logs`: the
    run's output directory, for the operator. Never raises."""
    action = ("drain the node; read this run's AGFHC logs" + (f" ({logs}, kept until the next run)" if logs else "")
              + " and report it to the system manufacturer")
    where = f" in recipe {recipe}" if recipe else ""
    verdicts: dict[str, list[tuple[str, str]]] = {}  # test -> (PASS|FAIL, rest of the line)
    lines = 0
    success = False
    exit_token = None
    counts = None
    stray: list[str] = []  # FAIL/ERROR/ABORT outside a test line
    for raw in text.splitlines()[:MAX_LINES]:
        line = _ANSI.sub("", raw).strip()
        if not line:
            continue
        m = _TEST.match(line)
        if m:
            test = m.group(2)
            if test in verdicts or len(verdicts) < MAX_TESTS:
                verdicts.setdefault(test, []).append((m.group(1).upper(), " ".join((m.group(3) or "").split())[:200]))
                lines += 1
            continue
        if _SUCCESS.search(line):
            success = True
        if e := _EXIT.search(line):
            exit_token = f"{e.group(1)} [{e.group(2)}]"
            if _SUCCESS.search(line):
                continue  # the success line itself
        if c := _COUNTS.search(line):
            counts = tuple(int(x) for x in c.groups())
        if _BAD_WORD.search(line):
            stray.append(line[:200])
    doc, results_problem = read_results(results_path)

    findings = []
    failed: list[str] = []
    for test, seen in verdicts.items():
        words = [w for w, _ in seen]
        if "FAIL" in words:
            rest = next((r for w, r in seen if w == "FAIL" and r), "")
            failed.append(test)
            findings.append(bad(_check(test), COMPONENT, node, f"AGFHC test {test} FAILED"
                                + (f" ({rest})" if rest else "") + where, action=action))
        else:
            findings.append(ok(_check(test), COMPONENT, node, f"AGFHC test {test} passed"
                               + (f" ({len(seen)} runs)" if len(seen) > 1 else "")))

    problems: list[str] = []
    if results_problem:
        problems.append(f"results.json: {results_problem}")
    elif doc is not None:
        problems += _judge_results(doc, node, findings, failed, where, action)
    if failed:
        # A failure stands whatever else is missing; the rest only says why nothing more can be said.
        return Parsed(findings, None if not problems else "; ".join(problems)[:1000],
                      f"AGFHC {recipe or 'recipe'}: {len(failed)} test(s) failed")
    if not success:
        problems.append("no `return code AGFHC_SUCCESS` line: AGFHC did not finish, or did not succeed"
                        + (f" (it said {exit_token})" if exit_token else ""))
    if returncode != 0:
        problems.append(f"agfhc exited {returncode} without naming a failed test")
    if not verdicts:
        problems.append("no test ran (AGFHC printed no PASS/FAIL test line)")
    if counts is not None:
        total, executed, skipped = counts
        if skipped or executed < total:
            problems.append(f"{skipped} of {total} tests skipped ({executed} executed): not validated")
        if executed != lines and not problems:
            problems.append(f"AGFHC says {executed} tests executed and printed {lines} test results")
    if stray:
        problems.append("AGFHC printed an error: " + "; ".join(stray[:3]))
    problem = "; ".join(problems)[:1000] or None
    return Parsed(findings, problem, f"AGFHC {recipe or 'recipe'}: {len(verdicts)} tests passed")


def _judge_results(doc: dict, node: str, findings: list, failed: list[str], where: str, action: str) -> list[str]:
    """results.json's say: failures added to `findings`/`failed` (a test it says failed loses the console's
    passing finding: one verdict per test); what it leaves unproven returned. `where`: " in recipe R" or ""."""
    problems = []
    total_failed = doc.get("total_failed")
    overall = doc.get("overall_result")
    tests = doc.get("tests")
    if total_failed is None and overall is None and not isinstance(tests, list):
        return ["results.json has none of total_failed, overall_result, tests"]
    named = []
    if isinstance(tests, list):
        for t in tests[:MAX_TESTS]:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                problems.append("results.json has a test entry without a name")
                continue
            name, result = t["name"][:64], str(t.get("result", "")).upper()
            if result.startswith("FAIL"):
                named.append(name)
            elif result not in _PASSING:
                problems.append(f"results.json: test {name} result {result or 'missing'}")
    elif tests is not None:
        problems.append("results.json: tests is not a list")
    for name in named:
        if name not in failed:
            failed.append(name)
            findings[:] = [f for f in findings if f.check != _check(name)]
            findings.append(bad(_check(name), COMPONENT, node, f"AGFHC test {name} FAILED (results.json){where}",
                                action=action))
    if total_failed is not None:
        if not isinstance(total_failed, int) or isinstance(total_failed, bool) or total_failed < 0:
            problems.append(f"results.json: total_failed is {total_failed!r}")
        elif total_failed > 0 and not named:
            failed.append(f"{total_failed} test(s)")
            findings.append(bad(CHECK, COMPONENT, node, f"AGFHC results.json: total_failed {total_failed}{where}"
                                " (it names no failed test)", action=action))
    if overall is not None:
        word = str(overall).upper()
        if word.startswith("FAIL"):
            if not failed:
                failed.append("overall")
                findings.append(bad(CHECK, COMPONENT, node, f"AGFHC results.json: overall_result {overall}",
                                    action=action))
        elif word not in _PASSING:
            problems.append(f"results.json: overall_result {str(overall)[:40]!r}")
    return problems
