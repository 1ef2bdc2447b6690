"""`agent --once`: every enabled check once, as a table a person reads in two seconds or as JSON (DESIGN §4)."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Iterable

from agent.base.validate import safe_text
from agent.base.findings import OK, UNHEALTHY, UNKNOWN, Finding, node_status

ORDER = {UNHEALTHY: 0, UNKNOWN: 1, OK: 2}
SEVERITY_ORDER = {"fatal": 0, "warning": 1, "info": 2}


def report_json(node: str, findings: Iterable[Finding], extra: dict | None = None) -> str:
    findings = list(findings)
    doc = {"node": node, "status": node_status(findings), "findings": [f.to_json() for f in findings]}
    if extra:
        doc.update(extra)
    # Strict JSON whatever a source put in a finding: json.dumps alone writes NaN/Infinity (not JSON) and
    # passes lone surrogates through (not UTF-8; printing them raises).
    return json.dumps(strict(doc), indent=2, allow_nan=False)


def strict(v: Any) -> Any:
    """A copy of `v` that json.dumps(allow_nan=False) always takes: NaN and +-Inf become null (an
    impossible value is not a value), text becomes valid UTF-8, and anything else its str()."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        return safe_text(v)
    if isinstance(v, dict):
        return {safe_text(str(k)): strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    return safe_text(str(v))



# Node-wide sources beyond the GPUs: `--once` shows their findings in a section of their own.
NODE_COMPONENTS = ("kernel", "mounts", "pcie", "nvme")
NODE_SECTION = "node checks (kernel log, mounts, PCIe AER, NVMe)"


def report_table(node: str, findings: Iterable[Finding], verbose: bool = False) -> str:
    """Problems first (fatal, then warnings, then unknown); passing checks folded into one row per entity
    unless `verbose`. Node-wide checks (NODE_COMPONENTS) follow in their own section."""
    findings = list(findings)
    status = node_status(findings)
    device = [f for f in findings if f.component not in NODE_COMPONENTS]
    nodewide = [f for f in findings if f.component in NODE_COMPONENTS]
    fired = [f for f in findings if f.status == UNHEALTHY]
    passing = [f for f in findings if f.status == OK and f.severity != "info"]
    info = sum(f.severity == "info" for f in fired) + sum(f.severity == "info" for f in findings if f.status == OK)
    lines = [f"node {node}: {status.upper()}"
             f"  ({sum(f.is_fatal for f in fired)} fatal, {sum(f.severity == 'warning' for f in fired)} warning, "
             f"{sum(f.status == UNKNOWN for f in findings)} unknown, {len(passing)} ok"
             + (f", {info} info" if info else "") + ")", ""]
    if device or not nodewide:
        lines += _table(_rows(device, verbose))
    if nodewide:
        if device:
            lines.append("")
        lines += [NODE_SECTION, *_table(_rows(nodewide, verbose))]
    return safe_text("\n".join(lines) + "\n")


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    header = ("CHECK", "ENTITY", "STATUS", "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in [header, *rows]]


def _rows(findings: list[Finding], verbose: bool) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    problems = sorted((f for f in findings if f.status != OK),
                      key=lambda f: (ORDER[f.status], SEVERITY_ORDER[f.severity], f.component, f.entity, f.check))
    for group in (_by_cause(problems) if not verbose else [[f] for f in problems]):
        f = group[0]
        label = f.severity.upper() if f.status == UNHEALTHY else "UNKNOWN"
        if len(group) == 1:
            detail = f.message + (f"  -> {f.action}" if f.action and f.status == UNHEALTHY else "")
            rows.append((f.check, f.entity, label, detail))
        else:  # one unread SMI command leaves many checks unknown on a GPU: one row per GPU and cause
            names = ", ".join(g.check.removeprefix(f"{f.component}.") for g in group)
            rows.append((f"{f.component}.* ({len(group)})", f.entity, label, f"{names}: {f.message}"))
    passing = [f for f in findings if f.status == OK]
    # Info events (a sysctl changed, a container exited) are news, not passing checks: never folded.
    rows += [(f.check, f.entity, "info", f.message) for f in passing if f.severity == "info"]
    passing = [f for f in passing if f.severity != "info"]
    if verbose:
        rows += [(f.check, f.entity, "ok", f.message) for f in passing]
    else:
        by_entity: dict[tuple[str, str], list[Finding]] = defaultdict(list)
        for f in passing:
            by_entity[(f.component, f.entity)].append(f)
        with_problems = {(f.component, f.entity) for f in problems}
        for (component, entity), fs in sorted(by_entity.items(), key=lambda kv: _natural(kv[0])):
            other = " other" if (component, entity) in with_problems else ""
            detail = fs[0].message if len(fs) == 1 else f"{len(fs)}{other} checks ok"
            rows.append((fs[0].check if len(fs) == 1 else f"{component}.*", entity, "ok", detail))
    return rows


def _by_cause(problems: list[Finding]) -> list[list[Finding]]:
    """Unknown findings of one entity with the same message (the same missing data) as one group, at the
    place of the first; everything else alone."""
    groups: list[list[Finding]] = []
    index: dict[tuple[str, str, str], list[Finding]] = {}
    for f in problems:
        if f.status != UNKNOWN:
            groups.append([f])
            continue
        key = (f.component, f.entity, f.message)
        if key in index:
            index[key].append(f)
        else:
            index[key] = [f]
            groups.append(index[key])
    return groups


def _natural(key: tuple[str, str]) -> tuple:
    comp, entity = key
    digits = "".join(ch for ch in entity if "0" <= ch <= "9")[:20]  # ASCII: int("²") raises
    return comp, entity.rstrip("0123456789/"), int(digits) if digits else -1, entity
