"""nccl-tests / rccl-tests `all_reduce_perf` on the node's GPUs (one process, -g N): bus bandwidth against the
model's floor, and the tool's own correctness check (#wrong, "Out of bounds values").

The output (fixtures/probes/nccl/) is a table: size, count, type, redop, [root,] then out-of-place time,
algbw, busbw, #wrong and the same in place; "#wrong" may be N/A (no check). Anything else on stdout (NCCL
INFO/WARN lines, MPI's help messages) is skipped. rccl-tests prints the same table. The floor
(agent/probes/floors.py, allreduce_busbw_gbps) is for a whole 8-GPU node at 1 GiB and more: smaller
sizes are reported, not judged. A run whose footer is missing stopped mid-run: unknown.
"""
from __future__ import annotations

import re

from agent.base import tools
from agent.base.findings import INFO, bad, ok, unknown
from agent.base.pci import count_gpus
from pathlib import Path

from .floors import floor_for
from .runner import COMPONENT, Parsed, Probe, ProbeContext, Unrunnable

CHECK = "probe.nccl.allreduce_busbw_gbps"
JUDGED_FROM = 1 << 30  # bytes: the floor's regime
FLOOR_GPUS = 8
_DEVICE = re.compile(r"^#\s+Rank\s+\d+\s.*\bdevice\s+\d+\s+\[[^\]]*\]\s+(.+?)\s*$")
_FOOT_OOB = re.compile(r"^#\s*Out of bounds values\s*:\s*(\d+)\s*(OK|FAILED)?")
_FOOT_AVG = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*([0-9.eE+-]+)")
MAX_ROWS = 10_000


class Nccl(Probe):
    name = "nccl"
    tools = ("all_reduce_perf",)  # nccl-tests and rccl-tests both build this name
    floor_metrics = ("allreduce_busbw_gbps",)
    gpu_subset = True  # on the free GPUs only, through the runtimes' visible-device variables
    what = "all_reduce_perf 1-8 GiB on every GPU: about 1 minute (quick), every GPU and NVLink/XGMI saturated"

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        s = ctx.settings.nccl
        env: dict[str, str] = {}
        if ctx.gpus is not None:
            # CUDA numbers GPUs in PCI order with CUDA_DEVICE_ORDER=PCI_BUS_ID (as NVML does); HIP reads
            # HIP_VISIBLE_DEVICES first (ROCR_VISIBLE_DEVICES would filter beneath it and renumber: not set).
            ids = ",".join(str(i) for i in ctx.gpus)
            env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ids, "HIP_VISIBLE_DEVICES": ids}
            n = len(ctx.gpus)
        else:
            n = len(ctx.gpu_names) or sum((count_gpus(Path(ctx.sysfs)) or {}).values())
        if not n:
            raise Unrunnable("no GPU found to run all_reduce_perf on (none on the PCI bus)")
        iters = s.iterations * (5 if ctx.level == "full" else 1)
        return [([binary, "-b", s.min_bytes, "-e", s.max_bytes, "-f", "2", "-g", str(n), "-n", str(iters), "-c", "1"],
                 env)]

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        return parse(done.stdout, done.returncode, ctx.node, done.last_line(), ctx.settings.floors)


def _num(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if v == v and abs(v) != float("inf") and v >= 0 else None


def _row(line: str) -> tuple[int, float, float, int | None] | None:
    """(size, out-of-place busbw, in-place busbw, wrong) from a table row; None for any other line."""
    f = line.split()
    if len(f) not in (12, 13) or not f[0].isdigit() or not f[1].isdigit():
        return None
    rest = f[-8:]
    vals = [_num(x) for x in (rest[0], rest[1], rest[2], rest[4], rest[5], rest[6])]
    if any(v is None for v in vals):
        return None
    wrong = 0
    for w in (rest[3], rest[7]):
        if w == "N/A":
            continue
        if not w.isdigit():
            return None
        wrong += int(w)
    return int(f[0]), vals[2], vals[5], wrong


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def parse(text: str, returncode: int, node: str, last_line: str = "", floors: dict | None = None) -> Parsed:
    """Findings from all_reduce_perf's stdout. Never raises."""
    rows, models, oob, avg = [], [], None, None
    for line in text.splitlines():
        m = _DEVICE.match(line)
        if m:
            models.append(m.group(1))
            continue
        m = _FOOT_OOB.match(line)
        if m:
            oob = int(m.group(1))
            continue
        m = _FOOT_AVG.match(line)
        if m:
            avg = _num(m.group(1))
            continue
        r = _row(line)
        if r is not None and len(rows) < MAX_ROWS:
            rows.append(r)
    problem = None
    if not rows:
        return Parsed(problem=f"all_reduce_perf printed no results (exit {returncode}"
                              + (f": {last_line}" if last_line else "") + ")")
    if oob is None or avg is None:
        problem = "all_reduce_perf's summary is missing: it stopped mid-run" + (
            f" (exit {returncode}: {last_line})" if returncode else "")
    elif returncode != 0:
        problem = f"all_reduce_perf exited {returncode}" + (f": {last_line}" if last_line else "")
    model = models[0] if models and len(set(models)) == 1 else None
    floor = floor_for("allreduce_busbw_gbps", model, floors) if len(models) == FLOOR_GPUS else None
    findings = []
    judged = [r for r in rows if r[0] >= JUDGED_FROM]
    for size, oop, inp, _ in judged:
        busbw = min(oop, inp)
        entity = _size(size)
        if floor is None:
            findings.append(ok(CHECK, COMPONENT, entity, f"bus bandwidth {busbw:g} GB/s at {entity} (no floor for "
                               f"{len(models)} x {model or 'mixed GPUs'}: measured, not judged)", severity=INFO,
                               value=busbw))
        elif busbw < floor.value:
            findings.append(bad(CHECK, COMPONENT, entity, f"bus bandwidth {busbw:g} GB/s at {entity} below the floor "
                                f"{floor.value:g} GB/s for 8 x {model} ({floor.source})", value=busbw,
                                threshold=floor.value, action="drain the node; check NVLink/XGMI and the GPUs"))
        else:
            findings.append(ok(CHECK, COMPONENT, entity, f"bus bandwidth {busbw:g} GB/s at {entity} (floor "
                               f"{floor.value:g})", value=busbw, threshold=floor.value))
    if not judged:
        findings.append(unknown(CHECK, COMPONENT, node, f"no message of {_size(JUDGED_FROM)} or more was run: "
                                "the floor cannot be judged"))
    wrong = sum(r[3] or 0 for r in rows)
    if wrong or oob:
        findings.append(bad("probe.nccl.correctness", COMPONENT, node,
                            f"all_reduce_perf found {max(wrong, oob or 0)} wrong values (silent corruption on a GPU "
                            f"or link)", value=max(wrong, oob or 0), threshold=0,
                            action="drain the node and run dcgm/builtin to find the GPU"))
    elif oob is not None:
        findings.append(ok("probe.nccl.correctness", COMPONENT, node, "every reduced value was right", value=0,
                           threshold=0))
    summary = f"{len(rows)} sizes on {len(models)} x {model or 'GPUs'}" + (f", avg bus bandwidth {avg:g} GB/s"
                                                                           if avg is not None else "")
    return Parsed(findings, problem, summary)
