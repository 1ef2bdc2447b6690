"""Findings: what health rules conclude, the one currency shared by `--once`, metrics and the stream."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

OK, UNHEALTHY, UNKNOWN = "ok", "unhealthy", "unknown"
FATAL, WARNING, INFO = "fatal", "warning", "info"
STATUSES = (OK, UNHEALTHY, UNKNOWN)
SEVERITIES = (FATAL, WARNING, INFO)
# A finding's kind. A state holds until a later cycle says otherwise (hysteresis applies, vigil_check_status
# shows it). An event happened once (an OOM kill, a sysctl written): it appears in exactly one cycle's output,
# the stream sends it as an info event (hysteresis would merge two OOMs in a row into one state), and
# vigil_check_status leaves it out (a series alive for one cycle is noise). The rule that makes it says which.
STATE, EVENT = "state", "event"
KINDS = (STATE, EVENT)


@dataclass(frozen=True)
class Finding:
    """One check on one entity. `status` says whether the check passed; `severity` says how much a failure
    matters (a warning that fires is status=unhealthy, severity=warning; only fatal ones make a node
    unhealthy)."""

    check: str  # dotted, stable: "gpu.ecc.uncorrectable"
    component: str  # gpu, rdma, container, netflow, sysctl, agent
    entity: str  # gpu3, mlx5_0/1, node ...
    status: str
    severity: str
    message: str
    value: Any = None
    threshold: Any = None
    action: str | None = None  # recommended action, NVSentinel-style: "reset the GPU", "drain the node" ...
    kind: str = STATE
    # An episode (agent/base/episodes.py): how many identical occurrences this finding stands for, and when the
    # first and the last were seen (wall clock). None: a single occurrence, or a state.
    count: int | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    # The PCI bus address of the GPU `entity` names (normalised "0000:3b:00.0"), set by the GPU sources: the
    # stream carries it (Event.bus_id) so the aggregator can find the GPU's DRA device. Not part of --json.
    bus_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"bad severity {self.severity!r}")
        if self.kind not in KINDS:
            raise ValueError(f"bad kind {self.kind!r}")

    @property
    def is_fatal(self) -> bool:
        return self.status == UNHEALTHY and self.severity == FATAL

    @property
    def is_event(self) -> bool:
        return self.kind == EVENT

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["kind"]  # --json lists states and events alike, as it always has
        del d["bus_id"]  # a wire detail (the entity names the GPU)
        if d["action"] is None:
            del d["action"]
        for key in ("count", "first_seen", "last_seen"):  # only an episode of several has them
            if d[key] is None or not self.count or self.count <= 1:
                del d[key]
        return d


def with_bus_ids(findings: Iterable[Finding], bus: dict[str, str]) -> list[Finding]:
    """The findings, each on a GPU entity of `bus` ("gpu3", or its partition "gpu3/1") with that GPU's bus id."""
    out = []
    for f in findings:
        b = bus.get(f.entity) or bus.get(f.entity.split("/", 1)[0])
        out.append(dataclasses.replace(f, bus_id=b) if b and f.bus_id is None else f)
    return out


def ok(check: str, component: str, entity: str, message: str, severity: str = FATAL, **kw: Any) -> Finding:
    return Finding(check, component, entity, OK, severity, message, **kw)


def bad(check: str, component: str, entity: str, message: str, severity: str = FATAL, **kw: Any) -> Finding:
    return Finding(check, component, entity, UNHEALTHY, severity, message, **kw)


def unknown(check: str, component: str, entity: str, message: str, severity: str = FATAL, **kw: Any) -> Finding:
    return Finding(check, component, entity, UNKNOWN, severity, message, **kw)


def node_status(findings: Iterable[Finding]) -> str:
    """healthy | unhealthy | unknown, as DESIGN §4: a fatal failure wins, then a fatal check that could not
    run. A warning check that could not run (a sysctl this kernel lacks) shows in the report but leaves the
    node's status alone, as a warning that fires does."""
    findings = list(findings)
    if any(f.is_fatal for f in findings):
        return "unhealthy"
    if any(f.status == UNKNOWN and f.severity == FATAL for f in findings):
        return "unknown"
    return "healthy"



EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNKNOWN, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 64, 78
# Neither 1 nor 2: a script must not read "could not start" as "unhealthy" or "could not look" (sysexits.h).
EXIT_SOFTWARE = 70  # an internal error (a bug): one line on stderr, the traceback only with --log-level debug
EXIT_ADDRESS_IN_USE = 75  # EX_TEMPFAIL: the listen address is taken (an old agent still stopping, another exporter)


def exit_code(status: str) -> int:
    return {"healthy": EXIT_HEALTHY, "unhealthy": EXIT_UNHEALTHY, "unknown": EXIT_UNKNOWN}[status]
