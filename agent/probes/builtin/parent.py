"""The built-in probe's adapter: starts the child (`python -m agent.probes.builtin`) under the tool runner and
judges its JSON. Per device (gpuN, or "cpu" where torch sees no GPU):
- probe.builtin.matmul_tflops and probe.builtin.copy_tbps: the measured value (Finding.value) against the
  model's floor (Finding.threshold, agent/probes/floors.py); under the floor is fatal (a degraded GPU). A
  model with no floor, and the CPU, get the measured value as info, not judged;
- probe.builtin.sdc: the deterministic product must equal the float64 reference bit for bit and carry the
  same digest on every device: any difference is silent data corruption, fatal.
A device the child could not test (an error) is unknown; a child that prints no complete document is unknown.
"""
from __future__ import annotations

import json
import os
import sys

from agent.base import tools
from agent.base.findings import INFO, bad, ok, unknown
from agent.base.validate import finite

from ..floors import floor_for
from ..runner import COMPONENT, Parsed, Probe, ProbeContext

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TORCH_MISSING = 3  # the child's exit status when torch cannot be imported
MEASURES = (("matmul_tflops", "TFLOP/s", "matrix product"), ("copy_tbps", "TB/s", "device copy"))


class Builtin(Probe):
    name = "builtin"
    tools = ()
    gpu_subset = True
    floor_metrics = ("matmul_tflops", "copy_tbps")  # judged by the model torch names
    what = ("PyTorch: bf16 8192^3 products and 1 GiB copies per GPU, plus an exact product checked for silent "
            "data corruption; about 10-30 s per GPU, each GPU fully busy while it runs")

    def find(self, ctx: ProbeContext) -> str | None:
        path = ctx.settings.builtin.path or sys.executable  # the interpreter that has torch
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        s = ctx.settings.builtin
        argv = [binary, "-W", "ignore", "-m", "agent.probes.builtin", "--matmul-size", str(s.matmul_size),
                "--copy-bytes", str(s.copy_bytes)]
        if ctx.gpus is not None:
            argv += ["--devices", ",".join(str(i) for i in ctx.gpus)]
        if s.peer:
            argv.append("--peer")
        corrupt = ctx.test_options.get("corrupt_device")
        if corrupt is not None:
            argv += ["--corrupt-device", str(int(corrupt))]
        # PCI order, as nvidia-smi and DCGM number GPUs; the child imports agent.probes.builtin from here.
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
               "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        return [(argv, env)]

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        return parse(done.stdout, done.returncode, ctx.node, done.last_line(), ctx.settings.floors)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not finite(v) or v < 0:
        return None
    return float(v)


def parse(text: str, returncode: int, node: str, last_line: str = "", floors: dict | None = None) -> Parsed:
    """Findings from the child's JSON (its last non-empty stdout line). Never raises."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    try:
        doc = json.loads(lines[-1]) if lines and len(lines[-1]) < (4 << 20) else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return Parsed(problem=f"the built-in probe printed no result (exit {returncode}"
                              + (f": {last_line}" if last_line else "") + ")")
    if returncode == TORCH_MISSING and doc.get("error"):
        return Parsed(unavailable=str(doc.get("error"))[:300])
    if returncode != 0:
        return Parsed(problem=f"the built-in probe exited {returncode}" + (f": {last_line}" if last_line else ""))
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        return Parsed(problem="the built-in probe tested no device")
    ref = doc.get("reference_digest")
    findings = []
    digests = {}
    for d in devices:
        if not isinstance(d, dict):
            continue
        idx = d.get("index")
        entity = f"gpu{idx}" if isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < 4096 else "cpu"
        name = str(d.get("name") or "")[:100]
        if d.get("error"):
            msg = f"not tested: {str(d['error'])[:300]}"
            findings += [unknown(f"probe.builtin.{m}", COMPONENT, entity, msg) for m, _, _ in MEASURES]
            findings.append(unknown("probe.builtin.sdc", COMPONENT, entity, msg))
            continue
        for metric, unit, what in MEASURES:
            value = _number(d.get(metric))
            check = f"probe.builtin.{metric}"
            if value is None:
                findings.append(unknown(check, COMPONENT, entity, f"{what}: no valid measurement ({d.get(metric)!r})"))
                continue
            floor = None if entity == "cpu" else floor_for(metric, name, floors)
            shown = f"{value:.4g} {unit}"
            if floor is None:
                findings.append(ok(check, COMPONENT, entity, f"{what} {shown} on {name or entity} (no floor for "
                                   f"this model: measured, not judged)", severity=INFO, value=round(value, 6)))
            elif value < floor.value:
                findings.append(bad(check, COMPONENT, entity, f"{what} {shown} below the floor {floor.value:.4g} "
                                    f"{floor.unit} for {name} ({floor.source})", value=round(value, 6),
                                    threshold=floor.value, action="drain the node and check the GPU (clocks, "
                                    "power, thermals, HBM)"))
            else:
                findings.append(ok(check, COMPONENT, entity, f"{what} {shown} (floor {floor.value:.4g} for {name})",
                                   value=round(value, 6), threshold=floor.value))
        sdc = d.get("sdc") if isinstance(d.get("sdc"), dict) else {}
        mism, dig = sdc.get("mismatches"), sdc.get("digest")
        if not isinstance(mism, int) or isinstance(mism, bool) or mism < 0 or not isinstance(dig, str):
            findings.append(unknown("probe.builtin.sdc", COMPONENT, entity, "exact product: no valid result"))
            continue
        digests[entity] = dig
        if mism or dig != ref:
            findings.append(bad("probe.builtin.sdc", COMPONENT, entity,
                                f"silent data corruption: the exact product differs from the float64 reference in "
                                f"{mism} of {sdc.get('elements', '?')} elements (digest {dig[:16]}, reference "
                                f"{str(ref)[:16]})", value=mism, threshold=0,
                                action="drain the node and replace the GPU"))
        else:
            findings.append(ok("probe.builtin.sdc", COMPONENT, entity,
                               "exact product equals the float64 reference bit for bit", value=0, threshold=0))
    if not findings:
        return Parsed(problem="the built-in probe's devices were unreadable")
    backend = str(doc.get("backend", "?"))[:10]
    return Parsed(findings, None, f"{len(digests)} device(s) on {backend}, torch {str(doc.get('torch'))[:20]}")
