"""NVIDIA DCGM diagnostics: `dcgmi diag -r <level> -j`, one finding per GPU (the worst of its tests).

Two JSON shapes, both read (fixtures/probes/dcgm/): DCGM 3.x nests the report under "DCGM GPU Diagnostic"
with results keyed by "gpu_ids" ("0,1,2" or a number) or "gpu_id"; DCGM 4.x names it "DCGM Diagnostic",
keys results by "entity_group"/"entity_id" and adds a per-test "test_summary". Statuses are Pass, Fail, Warn,
Skip and Not Run, in any case. dcgmi may print a line before the JSON, and exits non-zero when a test fails.
A test that failed fails its GPU (fatal); a warning warns; a GPU whose every test was skipped is unknown (it
was not tested); a report with no results, or a `runtime_error`, leaves the probe unknown.
"""
from __future__ import annotations

import json
from typing import Any

from agent.base import tools
from agent.base.config import ConfigError, check_json_depth
from agent.base.findings import WARNING, bad, ok, unknown
from agent.base.validate import ascii_int

from .runner import COMPONENT, Parsed, Probe, ProbeContext

CHECK = "probe.dcgm"
_RANK = {"fail": 3, "warn": 2, "pass": 1, "skip": 0, "not run": 0}
MAX_ENTITIES = 1024


class Dcgm(Probe):
    name = "dcgm"
    tools = ("dcgmi",)
    gpu_subset = True
    what = "dcgmi diag: level 2 (quick) about 2 min, level 3 (full) about 30 min; all GPUs busy throughout"

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        argv = [binary, "diag", "-r", str(ctx.settings.dcgm.level(ctx.level)), "-j"]
        if ctx.gpus is not None:
            argv += ["-i", ",".join(str(i) for i in ctx.gpus)]
        return [(argv, {})]

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        return parse(done.stdout, done.returncode, ctx.node, done.last_line())


def load_report(text: str) -> tuple[dict | None, str | None]:
    """The JSON object in dcgmi's stdout (after any line it prints first), or (None, why)."""
    start = text.find("{")
    if start < 0:
        return None, "no JSON report in dcgmi's output"
    body = text[start:]
    try:
        check_json_depth(body, "dcgmi")
        doc, _ = json.JSONDecoder().raw_decode(body)
    except ConfigError:
        return None, "dcgmi's JSON is nested too deep"
    except (ValueError, RecursionError):
        return None, "dcgmi's JSON report is incomplete or not JSON (did it stop mid-run?)"
    if not isinstance(doc, dict):
        return None, "dcgmi's JSON report is not an object"
    return doc, None


def _text(v: Any, limit: int = 300) -> str:
    if isinstance(v, str):
        return " ".join(v.split())[:limit]
    if isinstance(v, dict):
        return _text(v.get("warning") or v.get("message") or "", limit)
    if isinstance(v, list):
        return "; ".join(t for t in (_text(x, limit) for x in v[:8]) if t)[:limit]
    return ""


def _entities(result: dict) -> list[str] | None:
    """The entities a result is about: ["gpu0", ...]; [] for a node-wide result; None if unreadable."""
    group, eid = result.get("entity_group"), result.get("entity_id")
    if group is not None or eid is not None:  # DCGM 4.x
        n = ascii_int(eid, 0, MAX_ENTITIES) if not isinstance(eid, bool) else None
        if n is None and isinstance(eid, int) and not isinstance(eid, bool) and 0 <= eid <= MAX_ENTITIES:
            n = eid
        if n is None or not isinstance(group, str) or not group.isalnum():
            return None
        return [f"{group.lower()}{n}"]
    ids = result.get("gpu_ids", result.get("gpu_id"))  # DCGM 3.x: "0,1,2", 3, or "3"
    if ids is None:
        return []
    if isinstance(ids, int) and not isinstance(ids, bool):
        return [f"gpu{ids}"] if 0 <= ids <= MAX_ENTITIES else None
    if not isinstance(ids, str):
        return None
    out = []
    for part in ids.split(","):
        if not part.strip():
            continue
        n = ascii_int(part.strip(), 0, MAX_ENTITIES)
        if n is None:
            return None
        out.append(f"gpu{n}")
    return out


def parse(text: str, returncode: int, node: str, last_line: str = "") -> Parsed:
    """Findings from `dcgmi diag -j` output. Never raises."""
    doc, why = load_report(text)
    if doc is None:
        tail = f" (exit {returncode}" + (f": {last_line}" if last_line else "") + ")" if returncode else ""
        return Parsed(problem=why + tail)
    root = doc.get("DCGM Diagnostic", doc.get("DCGM GPU Diagnostic"))
    if not isinstance(root, dict):
        return Parsed(problem="dcgmi's report has no 'DCGM Diagnostic' object")
    problem = None
    if root.get("runtime_error"):
        problem = f"dcgmi diag could not run: {_text(root.get('runtime_error'))}"
    categories = root.get("test_categories")
    per: dict[str, dict[str, list[str]]] = {}  # entity -> status -> ["test: detail", ...]
    bad_results = 0
    tests_seen = 0
    for cat in categories if isinstance(categories, list) else []:
        if not isinstance(cat, dict) or not isinstance(cat.get("tests"), list):
            continue
        for test in cat["tests"]:
            if not isinstance(test, dict):
                continue  # real 3.1 output has nulls between tests
            name = _text(test.get("name"), 80) or "?"
            results = test.get("results")
            if not isinstance(results, list):
                continue
            tests_seen += 1
            for r in results:
                if not isinstance(r, dict):
                    bad_results += 1
                    continue
                status = str(r.get("status", "")).strip().lower()
                entities = _entities(r)
                if status not in _RANK or entities is None:
                    bad_results += 1
                    continue
                detail = _text(r.get("warnings")) or (_text(r.get("info")) if status != "pass" else "")
                for e in entities or ["node"]:
                    per.setdefault(e, {}).setdefault(status, []).append(f"{name}: {detail}" if detail else name)
    if not per and problem is None:
        problem = "dcgmi's report has no test results"
    findings = [_finding(entity, statuses, node) for entity, statuses in sorted(per.items(), key=_order)]
    failed = any(f.is_fatal for f in findings)
    if bad_results and problem is None:
        problem = f"{bad_results} dcgmi result(s) unreadable (no status or entity)"
    if returncode != 0 and not failed and problem is None:
        problem = f"dcgmi exited {returncode} with no failed test in its report" + (f": {last_line}" if last_line else "")
    meta = doc.get("metadata")
    version = _text(root.get("version") or (meta.get("version") if isinstance(meta, dict) else ""), 20)
    summary = f"{tests_seen} tests on {sum(e != 'node' for e in per)} GPUs" + (f" (DCGM {version})" if version else "")
    return Parsed(findings, problem, summary)


def _order(item: tuple[str, Any]) -> tuple:
    e = item[0]
    digits = "".join(c for c in e if "0" <= c <= "9")
    return (e.rstrip("0123456789"), int(digits) if digits else -1)


def _finding(entity: str, statuses: dict[str, list[str]], node: str):
    def names(s: str) -> str:
        items = list(dict.fromkeys(statuses.get(s, [])))
        return "; ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    skipped = len(statuses.get("skip", [])) + len(statuses.get("not run", []))
    extra = f", {skipped} skipped" if skipped else ""
    if "fail" in statuses:
        warn = f"; warnings: {names('warn')}" if "warn" in statuses else ""
        return bad(CHECK, COMPONENT, entity, f"dcgmi diag failed: {names('fail')}{warn}"[:1000],
                   action="drain the node and replace or reset the GPU (see the failed test)")
    if "warn" in statuses:
        return bad(CHECK, COMPONENT, entity, f"dcgmi diag warned: {names('warn')}"[:1000], severity=WARNING)
    if "pass" in statuses:
        return ok(CHECK, COMPONENT, entity, f"dcgmi diag: {len(statuses['pass'])} tests passed{extra}")
    return unknown(CHECK, COMPONENT, entity, f"dcgmi diag skipped every test ({names('skip') or names('not run')})"
                   [:1000])
