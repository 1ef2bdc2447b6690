"""AMD ROCm Validation Suite: `rvs -c <conf>` with a module config Vigil writes, one finding per GPU and module.

Modules (the conf's actions, modelled on AMD's own rvs/conf/MI300X and MI325X files):
- gst (GPU stress): a bf16 GEMM per GPU; rvs prints `[GPU:: <id>] GFLOPS <n> Target GFLOPS: <t> met: TRUE|FALSE`.
  The target Vigil writes is its own floor (floors.py matmul_tflops), so rvs's flag and Vigil's judgment agree;
  both are checked.
- babel (memory bandwidth): BabelStream kernels; a table `<gpu id> Copy <MBytes/sec> <max> <min> <avg>`; Copy
  is judged against floors.py copy_tbps (bytes read plus written, as BabelStream counts them).
- pebb (PCIe host<->device bandwidth): `pcie-bandwidth [i/n] [CPU:: c] [GPU:: idx - id - bdf] h2d::x d2h::y
  <n> GBps`; the best CPU node per GPU and direction against floors.py pcie_gbps.
- pbqt (peer-to-peer over XGMI, full level): `p2p-bandwidth[i/n] [GPU:: ...] [GPU:: ...] bidirectional: x <n>
  GBps`; each GPU's slowest peer against floors.py xgmi_p2p_gbps.
- iet (power, full level): `[GPU:: <id>] pass: TRUE|FALSE` against the target power AMD's conf sets per model.

rvs names GPUs by their KFD gpu_id (42583), not an index. The id is mapped to the node's GPU through the KFD
topology in sysfs (nodes/N/gpu_id and the PCI address in nodes/N/properties) and the GPU source's PCI
addresses; rvs 1.6's summary table (`index - node - bdf` under `model - gpu_id`) and pebb/pbqt lines
(`[GPU:: idx - id - bdf]`) carry the address too. A GPU it cannot map keeps rvs's id (entity `kfd-gpu-<id>`).

rvs exits 0 whether an action passed or failed: its verdict is in the output. A run is complete when the
summary table (`| action | MODULE | PASS|FAIL |`, rvs 1.4+, ROCm 7.1+) lists every action Vigil asked for and is
closed by its border line, or, for an
older rvs without it, when every action printed a result for every GPU; anything short of that is unknown.
An RVS-ERROR (a bad key, no GPU, a rocBLAS error) leaves its action unknown: it did not test, it did not fail.
fixtures/probes/rvs/ holds AMD's published sample outputs and outputs constructed from its format strings.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.base import tools
from agent.base.findings import INFO, bad, ok, unknown
from agent.base.pci import normalize

from .floors import Floor, floor_for, model_key
from .runner import COMPONENT, Parsed, Probe, ProbeContext, Unrunnable

CHECK = "probe.rvs"
MODULES = ("gst", "babel", "pebb", "pbqt", "iet")
MAX_LINES = 200_000
MAX_ID = 1 << 32

# AMD's own per-model targets (ROCm/ROCmValidationSuite rvs/conf/<model>/iet_stress.conf, commit 21584e1):
# iet-stress-750W-dgemm-true (MI300X), iet-stress-1000W-dgemm-true (MI325X).
IET_WATTS = {"mi300x": 750.0, "mi325x": 1000.0}
IET_SOURCE = "AMD rvs/conf/{model}/iet_stress.conf target_power"


@dataclass
class Action:
    name: str
    module: str
    floor: Floor | None = None  # Vigil's floor for the module's measurement on this model
    target: float = 0.0  # what rvs is told (gst target_stress GFLOPS, iet target_power W)
    lines: list[str] = field(default_factory=list)  # the conf's keys for it
    kind: str = ""  # the check's name when one module runs twice (pebb_h2d, pebb_d2h)

    @property
    def check(self) -> str:
        return f"{CHECK}.{self.kind or self.module}"


def plan(ctx: ProbeContext) -> tuple[list[Action], list[str]]:
    """The actions for this node and level, and the modules left out (why)."""
    s = ctx.settings.rvs
    wanted = s.full_modules if ctx.level == "full" else s.quick_modules
    models = {n for i, n in ctx.gpu_names.items() if ctx.gpus is None or i in ctx.gpus}
    model = next(iter(models)) if len(models) == 1 else None
    key = model_key(model)
    floors = ctx.settings.floors
    full = ctx.level == "full"
    actions, skipped = [], []
    for module in dict.fromkeys(wanted):
        if module == "gst":
            f = floor_for("matmul_tflops", model, floors)
            a = Action("vigil-gst-bf16", "gst", f, round(f.value * 1000) if f else 0)
            # AMD's MI300X/MI325X gst_single.conf bf16 action (gst-581Tflops-4K4K8K-rand-bf16), its shape kept.
            a.lines = ["parallel: true", "count: 1", "log_interval: 3000", "ramp_interval: 5000",
                       f"duration: {s.gst_duration_ms * (4 if full else 1)}", "hot_calls: 1000",
                       "copy_matrix: false", f"target_stress: {int(a.target)}", "matrix_size_a: 4864",
                       "matrix_size_b: 4096", "matrix_size_c: 8192", "matrix_init: rand", "data_type: bf16_r",
                       "lda: 8320", "ldb: 8320", "ldc: 4992", "ldd: 4992", "transa: 1", "transb: 0", "alpha: 1",
                       "beta: 0"]
            actions.append(a)
        elif module == "babel":
            a = Action("vigil-babel-float", "babel", floor_for("copy_tbps", model, floors))
            # AMD's MI300X babel.conf (babel-float-256MiB), decimal MB/s so TB/s is value / 1e6.
            a.lines = ["parallel: true", "count: 1", f"num_iter: {5000 if full else 1000}", "duration: 0",
                       "array_size: 268435456", "test_type: 1", "mibibytes: false", "o/p_csv: false",
                       "copy: true", "mul: true", "add: true", "dot: true", "triad: true"]
            actions.append(a)
        elif module == "pebb":
            f = floor_for("pcie_gbps", model, floors)
            for direction, h2d in (("h2d", "true"), ("d2h", "false")):
                a = Action(f"vigil-pebb-{direction}", "pebb", f, kind=f"pebb_{direction}")
                a.lines = [f"duration: {s.pebb_duration_ms * (3 if full else 1)}",
                           f"device_to_host: {'false' if h2d == 'true' else 'true'}", f"host_to_device: {h2d}",
                           "parallel: false", "block_size: 67108864", "link_type: 2"]
                actions.append(a)
        elif module == "pbqt":
            a = Action("vigil-pbqt-unidir", "pbqt", floor_for("xgmi_p2p_gbps", model, floors))
            a.lines = ["log_interval: 5000", f"duration: {s.pbqt_duration_ms}", "peers: {peers}",
                       "test_bandwidth: true", "bidirectional: false", "parallel: true", "block_size: 67108864",
                       "device_id: all"]
            actions.append(a)
        elif module == "iet":
            watts = s.iet_target_watts or IET_WATTS.get(key or "")
            if not watts:
                skipped.append(f"iet: no power target for {model or 'these GPUs'} (set probes.rvs.iet_target_watts)")
                continue
            a = Action(f"vigil-iet-{int(watts)}W", "iet", None, watts)
            a.lines = ["parallel: true", f"duration: {s.iet_duration_ms}", "sample_interval: 3000",
                       f"target_power: {watts:g}", "matrix_size: 28000", "matrix_init: hiprand", "ops_type: dgemm"]
            actions.append(a)
    return actions, skipped


def conf_text(actions: list[Action], device: str) -> str:
    """The YAML rvs reads (`actions:` with one mapping per action), GPUs by KFD gpu_id or `all`."""
    out = ["# written by Vigil (agent/probes/rvs.py) for one validation run", "actions:"]
    for a in actions:
        out += [f"- name: {a.name}", f"  device: {device}", f"  module: {a.module}"]
        out += [f"  {line.replace('{peers}', device)}" for line in a.lines]
        out.append("")
    return "\n".join(out)


def kfd_gpus(sysfs: str) -> dict[int, str]:
    """KFD gpu_id -> PCI address, from <sysfs>/class/kfd/kfd/topology/nodes/*/{gpu_id,properties}."""
    root = Path(sysfs) / "class" / "kfd" / "kfd" / "topology" / "nodes"
    out: dict[int, str] = {}
    try:
        nodes = sorted(root.iterdir())[:1024]
    except OSError:
        return out
    for node in nodes:
        try:
            gid = int((node / "gpu_id").read_text().strip() or "0")
            props = dict(line.split(None, 1) for line in (node / "properties").read_text().splitlines()
                         if len(line.split(None, 1)) == 2)
            loc, domain = int(props["location_id"]), int(props.get("domain", "0"))
        except (OSError, ValueError, KeyError):
            continue
        if 0 < gid < MAX_ID and 0 <= loc < 1 << 16 and 0 <= domain < 1 << 16:
            out[gid] = f"{domain:04x}:{loc >> 8:02x}:{(loc >> 3) & 0x1f:02x}.{loc & 7}"
    return out


class Rvs(Probe):
    name = "rvs"
    tools = ("rvs",)
    gpu_subset = True
    floor_metrics = ("matmul_tflops", "copy_tbps", "pcie_gbps", "xgmi_p2p_gbps")
    what = ("ROCm Validation Suite: gst + babel + pebb about 3-5 min (quick); adds pbqt and iet (full, about "
            "15 min); every GPU selected fully busy")

    def find(self, ctx: ProbeContext) -> str | None:
        found = super().find(ctx)
        if found is None and not ctx.settings.rvs.path and os.access("/opt/rocm/bin/rvs", os.X_OK):
            return "/opt/rocm/bin/rvs"  # the ROCm packages install it there, often off PATH
        return found

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        actions, _ = plan(ctx)
        if not actions:
            raise Unrunnable("no rvs module to run (probes.rvs.quick_modules / full_modules)")
        device = "all"
        if ctx.gpus is not None:
            by_bus = {bus: gid for gid, bus in kfd_gpus(ctx.sysfs).items()}
            ids = [by_bus.get(normalize(ctx.gpu_buses.get(i, "")) or "") for i in ctx.gpus]
            if not ids or None in ids:
                raise Unrunnable("cannot point rvs at the free GPUs only: their KFD gpu_ids are unknown "
                                 "(no PCI address or no /sys/class/kfd topology for them)")
            device = " ".join(str(i) for i in ids)
        path = os.path.join(ctx.settings.state_dir, f"rvs-{ctx.level}.conf")
        try:
            os.makedirs(ctx.settings.state_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write(conf_text(actions, device))
        except OSError as e:
            raise Unrunnable(f"cannot write the rvs conf {path}: {e.strerror or e}") from None
        return [([binary, "-c", path], {})]

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        actions, skipped = plan(ctx)
        by_bus = {normalize(b): f"gpu{i}" for i, b in ctx.gpu_buses.items() if normalize(b)}
        p = parse(done.stdout, done.returncode, ctx.node, actions, gpu_entities(ctx), expected_gpus(ctx), by_bus)
        if skipped and not p.problem:
            p.summary += "; " + "; ".join(skipped)
        return p


def gpu_entities(ctx: ProbeContext) -> dict[int, str]:
    """KFD gpu_id -> the node's GPU entity (gpuN), through the PCI address."""
    by_bus = {normalize(b): i for i, b in ctx.gpu_buses.items() if normalize(b)}
    out = {}
    for gid, bus in kfd_gpus(ctx.sysfs).items():
        if bus in by_bus:
            out[gid] = f"gpu{by_bus[bus]}"
    return out


def expected_gpus(ctx: ProbeContext) -> int | None:
    """How many GPUs rvs was asked to test (None: not known)."""
    if ctx.gpus is not None:
        return len(ctx.gpus)
    n = len(kfd_gpus(ctx.sysfs))
    # No KFD topology to count: the GPU source's inventory (AMD GPUs: rvs tests no other), so that results
    # for 2 of 8 GPUs are never read as the node's pass.
    amd = [i for i, name in ctx.gpu_names.items() if re.search(r"\b(amd|instinct|mi\d{3})", name, re.I)]
    return n or len(amd) or None


# -- parsing --------------------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG = re.compile(r"^\[(RESULT|ERROR|INFO|DEBUG|TRACE)\s*\]\s*\[\s*[0-9.]+\s*\]\s?(.*)$")
_ERR = re.compile(r"^RVS-ERROR(?:\s+\[([^\]]*)\])?(?:\s+\[([^\]]*)\])?\s*(.*)$")
_RESTATED = "Action failed to run successfully"
_ACTION = re.compile(r"^Action name\s*:\s*(\S+)")
_BDF = r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
_GPU3 = rf"\[GPU::\s*(\d+)\s*-\s*(\d+)\s*-\s*({_BDF})\]"
_GST = re.compile(r"^\[([^\]]+)\]\s+\[GPU::\s*(\d+)\]\s+GFLOPS\s+(\d+)\s+Target GFLOPS:\s*(\d+)\s+met:\s*(TRUE|FALSE)")
_IET = re.compile(r"^\[([^\]]+)\]\s+\[GPU::\s*(\d+)\]\s+pass:\s*(TRUE|FALSE)")
_POWER = re.compile(r"^\[([^\]]+)\]\s+\[GPU::\s*(\d+)\]\s+Power\(W\)\s+([0-9.]+)")
_PEBB = re.compile(rf"^\[([^\]]+)\]\s+pcie-bandwidth\s*\[\s*\d+/\s*\d+\]\s+\[CPU::\s*\d+\]\s+{_GPU3}\s+"
                   r"h2d::(true|false)\s+d2h::(true|false)\s+([0-9.]+)\s+GBps")
_PBQT = re.compile(rf"^\[([^\]]+)\]\s+p2p-bandwidth\s*\[\s*\d+/\s*\d+\]\s+{_GPU3}\s+{_GPU3}\s+"
                   r"bidirectional:\s*(true|false)\s+([0-9.]+)\s+GBps")
_BABEL_START = re.compile(r"^\[([^\]]+)\]\s+\[GPU::\s*(\d+)\]\s+Starting the Babel")
_BABEL_ROW = re.compile(r"^\s*(\d+)\s+(Read|Write|Copy|Mul|Add|Triad|Dot)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+"
                        r"([0-9.]+)\s*$")
_BABEL_UNIT = re.compile(r"GPU Id\s+Function\s+(Mi?Bytes)/sec")
_GST_ERR = re.compile(r"^\[([^\]]+)\]\s+(gst|iet|babel)\s+(\d+)\s+(.+)$")
_SUMMARY = re.compile(r"^\|\s*(\S+)\s*\|\s*(\w+)\s*\|\s*(PASS|FAIL)\s*\|$")
_OVERVIEW_ID = re.compile(r"^(.+?)\s+-\s+(\d+)$")
_OVERVIEW_BUS = re.compile(rf"^(\d+)\s+-\s+(\d+)\s+-\s+({_BDF})$")


@dataclass
class _Gpu:
    flags: list[bool] = field(default_factory=list)  # gst met / iet pass
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    worst_peer: str = ""


def _num(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if v == v and 0 <= v < 1e15 else None


def parse(text: str, returncode: int, node: str, actions: list[Action], entities: dict[int, str] | None = None,
          expected: int | None = None, by_bus: dict[str, str] | None = None) -> Parsed:
    """Findings from `rvs -c` stdout for the `actions` Vigil asked for. `entities`: KFD gpu_id -> entity (from
    sysfs); `by_bus`: PCI address -> entity, for the addresses rvs prints itself; `expected`: how many GPUs it
    was asked to test. Never raises."""
    known = {a.name: a for a in actions}
    ids = dict(entities or {})
    per: dict[str, dict[int, _Gpu]] = {a.name: {} for a in actions}  # action -> gpu_id -> what it printed
    summary: dict[str, str] = {}
    summary_closed = False  # rvs closes the summary table with a +---+ line: the end of its output
    summary_started = False  # its header printed: the rows must follow
    errors: dict[str, list[str]] = {}
    global_errors: list[str] = []
    seen_actions: set[str] = set()
    overview_ids: list[int | None] = []
    rvs_index: dict[int, tuple[int, str]] = {}  # gpu_id -> (rvs index, bus)
    babel_action, babel_scale = None, 1.0
    for raw in text.splitlines()[:MAX_LINES]:
        line = _ANSI.sub("", raw).rstrip()
        m = _LOG.match(line.strip())
        level, msg = (m.group(1), m.group(2).strip()) if m else ("", line.strip())
        e = _ERR.match(msg)
        if e and _RESTATED in e.group(3):
            continue  # rvs's echo of an action's FAIL (the summary says it): not an error of its own
        if e:
            target = e.group(2) if e.group(2) in known else e.group(1) if e.group(1) in known else None
            (errors.setdefault(target, []) if target else global_errors).append(" ".join(msg.split())[:300])
            continue
        if level == "ERROR":
            g = _GST_ERR.match(msg)
            if g and g.group(1) in known:
                per[g.group(1)].setdefault(int(g.group(3)), _Gpu()).errors.append(g.group(4)[:200])
            else:
                global_errors.append(msg[:300])
            continue
        if line.startswith("|") and "ROCm Validation Suite (RVS) Summary" not in line:
            s = _SUMMARY.match(line)
            if s:
                summary[s.group(1)] = s.group(3)
                summary_closed = False
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            heads = [_OVERVIEW_ID.match(c) for c in cells]
            if heads and all(heads) and not any(_OVERVIEW_BUS.match(c) for c in cells):
                overview_ids = [int(h.group(2)) for h in heads]
                continue
            buses = [_OVERVIEW_BUS.match(c) for c in cells]
            if overview_ids and len(buses) == len(overview_ids) and all(buses):
                for gid, b in zip(overview_ids, buses):
                    rvs_index[gid] = (int(b.group(1)), b.group(3).lower())
            overview_ids = []
            continue
        if "ROCm Validation Suite (RVS) Summary" in line:
            summary_started = True
        if summary and re.fullmatch(r"\+-+\+", line.strip()):
            summary_closed = True
            continue
        a = _ACTION.match(msg)
        if a:
            seen_actions.add(a.group(1))
            continue
        u = _BABEL_UNIT.search(line)
        if u:
            babel_scale = 1.048576 if u.group(1) == "MiBytes" else 1.0
            continue
        if (g := _GST.match(msg)) and g.group(1) in known:
            gpu = per[g.group(1)].setdefault(int(g.group(2)), _Gpu())
            gpu.flags.append(g.group(5) == "TRUE")
            gpu.values.append(int(g.group(3)) / 1000.0)  # GFLOPS -> TFLOP/s
        elif (g := _IET.match(msg)) and g.group(1) in known:
            per[g.group(1)].setdefault(int(g.group(2)), _Gpu()).flags.append(g.group(3) == "TRUE")
        elif (g := _POWER.match(msg)) and g.group(1) in known:
            v = _num(g.group(3))
            if v is not None:
                per[g.group(1)].setdefault(int(g.group(2)), _Gpu()).values.append(v)
        elif (g := _PEBB.match(msg)) and g.group(1) in known:
            gid = int(g.group(3))
            rvs_index.setdefault(gid, (int(g.group(2)), g.group(4).lower()))
            v = _num(g.group(7))
            if v is not None:
                per[g.group(1)].setdefault(gid, _Gpu()).values.append(v)
        elif (g := _PBQT.match(msg)) and g.group(1) in known:
            src, dst = int(g.group(3)), int(g.group(6))
            rvs_index.setdefault(src, (int(g.group(2)), g.group(4).lower()))
            rvs_index.setdefault(dst, (int(g.group(5)), g.group(7).lower()))
            v = _num(g.group(9))
            if v is not None:
                gpu = per[g.group(1)].setdefault(src, _Gpu())
                if not gpu.values or v < min(gpu.values):
                    gpu.worst_peer = str(dst)
                gpu.values.append(v)
        elif (g := _BABEL_START.match(msg)) and g.group(1) in known:
            babel_action = g.group(1)
        elif babel_action and (r := _BABEL_ROW.match(line)):
            if r.group(2) == "Copy":
                v = _num(r.group(3))
                if v is not None:
                    per[babel_action].setdefault(int(r.group(1)), _Gpu()).values.append(v * babel_scale / 1e6)
    # ids sysfs did not map: the PCI address rvs printed for them
    for gid, (_, bus) in rvs_index.items():
        if gid not in ids and (by_bus or {}).get(bus):
            ids[gid] = by_bus[bus]

    def entity(gid: int) -> str:
        return ids.get(gid) or f"kfd-gpu-{gid}"

    findings = []
    problems = []
    for a in actions:
        gpus = per[a.name]
        errs = errors.get(a.name, [])
        verdict = summary.get(a.name)
        for gid, gpu in sorted(gpus.items()):
            findings.append(_judge(a, entity(gid), gpu, entity))
        failed_here = any(f.is_fatal for f in findings if f.check == a.check)
        if errs:
            problems.append(f"{a.name}: {'; '.join(errs[:3])}")
        elif verdict == "FAIL" and not failed_here:
            findings.append(bad(a.check, COMPONENT, node, f"rvs {a.module} action {a.name} failed "
                                "(rvs gave no per-GPU reason)", action="drain the node and rerun rvs by hand"))
        if errs:
            continue
        if verdict is None and (summary or returncode != 0 or not gpus):
            problems.append(f"{a.name}: no result (rvs stopped before it finished)")
        elif expected is not None and len(gpus) < expected:
            problems.append(f"{a.name}: results for {len(gpus)} of {expected} GPUs")
    if summary_started and not summary:
        problems.append("rvs's summary table is cut off before its results: it stopped before it finished")
    elif summary and not summary_closed:
        problems.append("rvs's summary table is cut off: it stopped before it finished")
    if global_errors:
        problems.insert(0, "rvs: " + "; ".join(global_errors[:3]))
    if returncode != 0 and not problems:
        problems.append(f"rvs exited {returncode}")
    problem = "; ".join(problems)[:1000] or None
    summary_line = f"{len(actions)} rvs actions on {len({g for p in per.values() for g in p})} GPUs"
    return Parsed(findings, problem, summary_line)


def _judge(a: Action, ent: str, gpu: _Gpu, entity):
    check = a.check
    if gpu.errors and not gpu.flags and not gpu.values:
        return unknown(check, COMPONENT, ent, f"rvs {a.module} could not run on this GPU: {gpu.errors[0]}")
    if a.module in ("gst", "iet"):
        if not gpu.flags:
            return unknown(check, COMPONENT, ent, f"rvs {a.module} printed no verdict for this GPU")
        passed = all(gpu.flags)
        if a.module == "iet":
            peak = max(gpu.values) if gpu.values else None
            seen = f"; peak {peak:g} W" if peak is not None else ""
            if not passed:
                return bad(check, COMPONENT, ent, f"rvs iet: did not sustain {a.target:g} W{seen}", value=peak,
                           threshold=a.target, action="drain the node; check the GPU's power delivery and cooling")
            return ok(check, COMPONENT, ent, f"rvs iet: sustained {a.target:g} W{seen}", value=peak,
                      threshold=a.target)
        tflops = max(gpu.values) if gpu.values else None
        below = a.floor is not None and tflops is not None and tflops < a.floor.value
        if not passed or below:
            floor = f" (floor {a.floor.value:g} TFLOP/s: {a.floor.source})" if a.floor else ""
            return bad(check, COMPONENT, ent, f"rvs gst: {tflops:g} TFLOP/s bf16, target not met{floor}",
                       value=tflops, threshold=a.floor.value if a.floor else None,
                       action="drain the node; the GPU is throttled or degraded")
        if a.floor is None:
            return ok(check, COMPONENT, ent, f"rvs gst: {tflops:g} TFLOP/s (no floor for this model: measured, "
                      "not judged)", severity=INFO, value=tflops)
        return ok(check, COMPONENT, ent, f"rvs gst: {tflops:g} TFLOP/s bf16 (floor {a.floor.value:g})",
                  value=tflops, threshold=a.floor.value)
    what = {"babel": ("memory copy", "TB/s"), "pebb": ("PCIe " + a.name.rsplit("-", 1)[-1], "GB/s"),
            "pbqt": ("XGMI peer copy (slowest peer)", "GB/s")}[a.module]
    if not gpu.values:
        return unknown(check, COMPONENT, ent, f"rvs {a.module} printed no measurement for this GPU")
    value = min(gpu.values) if a.module == "pbqt" else max(gpu.values)
    value = round(value, 3)
    peer = f" to {entity(int(gpu.worst_peer))}" if a.module == "pbqt" and gpu.worst_peer else ""
    if a.floor is None:
        return ok(check, COMPONENT, ent, f"rvs {a.module}: {what[0]} {value:g} {what[1]}{peer} (no floor for this "
                  "model: measured, not judged)", severity=INFO, value=value)
    if value < a.floor.value:
        return bad(check, COMPONENT, ent, f"rvs {a.module}: {what[0]} {value:g} {what[1]}{peer} below the floor "
                   f"{a.floor.value:g} ({a.floor.source})", value=value, threshold=a.floor.value,
                   action="drain the node; check the GPU's memory, PCIe link or XGMI links")
    return ok(check, COMPONENT, ent, f"rvs {a.module}: {what[0]} {value:g} {what[1]}{peer} (floor "
              f"{a.floor.value:g})", value=value, threshold=a.floor.value)
