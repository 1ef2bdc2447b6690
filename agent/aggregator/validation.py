"""Active validation gates at the aggregator (DESIGN §8): when to ask a node's agent to run its probes, and what a
result does to the node. The agent runs them (agent/stream/validation.py) and answers with info events on the
stream; here the summary event (check probe.validation, value {"request": id, ...}) decides.

Triggers (only agents whose Hello said handles_validation are asked; for any other, validation is `unavailable`,
never a pass, and the node's Event, annotation and condition say so):
- (a) startup: a Node carrying the startup taint vigil.dev/unvalidated:NoSchedule (kubelet
  --register-with-taints) is asked once its agent connects; a pass removes that taint (only it, read-modify-write
  with the Node's resourceVersion, like every Vigil write). A fail or an unknown keeps it.
- (b) release gate: a node Vigil quarantined (its taint and cordon, or its DeviceTaintRules) whose fault cleared
  (healthy_delay, as before) is released only after a validation requested after the clearing passed. Failed:
  it stays quarantined, condition VigilHealthy=False reason ValidationFailed, a Warning Event.
- (c) on demand: `vigil-aggregator validate NODE` writes the annotation vigil.dev/validate (Kubernetes RBAC on
  nodes decides who may ask, as for every other Node write); the leader sends the request and writes the result.
- (d) periodic (off by default): a healthy, schedulable, untainted node whose last validation is older than
  `periodic_seconds`, at most `max_nodes` (or `max_percent` of the connected nodes) validating at once. The agent's
  attribution gate refuses probes on GPUs a pod holds (unknown, nothing changes): "idle" is decided on the node,
  where it is known. A periodic failure quarantines the node (`periodic_failure` "quarantine", the default: the
  taint and cordon through the cordon budget, condition reason probe.validation, as a fatal fault would), until
  a validation of the same boot passes (a person's `validate`) or the node reboots (the release gate then asks
  again); "report" only reports it (Event, annotation, metric). An unknown changes nothing.

Every result is written to the annotation vigil.dev/v1.validation (time, result, trigger, probes, message) and
counted (vigil_aggregator_validations_total{result,trigger}). A request that gets no summary within
`timeout_seconds` is unknown. An unknown is asked again after `retry_seconds`; a fail is not (in this boot, or
for this clearing: a reboot or a new fault and recovery asks again, and so does a person with `validate`).
A new leader (a Lease change, a restart) recovers what the previous one wrote on each Node, once the node's agent
said which boot it runs: the pending request (annotation vigil.dev/v1.validation-pending, written when a request is
sent, removed with its result) is adopted, so its summary still counts and no second request hits an agent that
is busy with the first; the latest result (vigil.dev/v1.validation, which names its boot) of the same boot is
restored, so a fail keeps holding the node (it is not asked again) and an unknown waits out its retry delay.
What is recovered may hold a node, never release one: a recorded pass releases nothing, and an adopted request
answered pass lifts the startup taint (it ran in this boot) but not a quarantine (this leader cannot tell
whether the fault cleared before it was asked), which is asked again.
Dry-run: requests are still sent (the agent's safety rules apply, and `quarantined` reflects what the Node
really shows); nothing is written, each write is logged as it would be.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, StreamHandle

log = logging.getLogger(__name__)

STARTUP_TAINT = "vigil.dev/unvalidated"
STARTUP_EFFECT = "NoSchedule"
ANNOTATION = "vigil.dev/v1.validation"  # the latest validation's result (cleanup removes it)
REQUEST = "vigil.dev/validate"  # a person's request: {"id": ..., "probes": [...], "level": ...}
PENDING = "vigil.dev/v1.validation-pending"  # the request sent and not yet answered, for the next leader
SUMMARY = "probe.validation"
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# What agents of this version know (agent/probes/validate.py)
PROBE_NAMES = ("dcgm", "rvs", "agfhc", "nccl", "perftest", "builtin")
LEVELS = ("quick", "full")
PASS, FAIL, UNKNOWN, UNAVAILABLE = "pass", "fail", "unknown", "unavailable"
RESULTS = (PASS, FAIL, UNKNOWN, UNAVAILABLE)
TRIGGERS = ("startup", "release", "manual", "periodic")
CONDITION_REASON = {FAIL: "ValidationFailed", UNKNOWN: "ValidationUnknown", UNAVAILABLE: "ValidationUnavailable",
                    "pending": "ValidationPending"}
EVENT_REASON = {PASS: "VigilValidationPassed", FAIL: "VigilValidationFailed", UNKNOWN: "VigilValidationUnknown",
                UNAVAILABLE: "VigilValidationUnavailable"}
MAX_DETAILS = 10  # non-ok probe findings kept per request, for the Event and the annotation
MAX_TEXT = 1024


@dataclass(frozen=True)
class ValidationConfig:
    enabled: bool = False  # off: no node is asked (a person's `validate` is answered unavailable), nothing gated
    timeout_seconds: float = 1800.0  # no summary this long after the request: unknown
    probes: tuple[str, ...] = ()  # () = every probe the agent enables
    level: str = "quick"
    retry_seconds: float = 900.0  # an unknown result is asked again after this
    periodic_seconds: float | None = None  # (d): validate idle nodes this often; None: off
    max_nodes: int | None = None  # (d): at most this many validating at once (default 1)
    max_percent: float | None = None  # (d): or this share of the connected nodes (the smaller)
    periodic_failure: str = "quarantine"  # (d): what a failed periodic validation does: quarantine | report

    def limit(self, total: int) -> int:
        limits = []
        if self.max_nodes is not None:
            limits.append(self.max_nodes)
        if self.max_percent is not None:
            limits.append(max(1, int(total * self.max_percent / 100.0)))
        return min(limits) if limits else 1


@dataclass
class Request:
    id: str
    trigger: str
    probes: tuple[str, ...]
    level: str
    boot: str | None
    sent_at: float  # engine clock
    deadline: float
    details: deque = field(default_factory=lambda: deque(maxlen=MAX_DETAILS))
    adopted: bool = False  # sent by a previous leader (PENDING), adopted by this one
    written: bool = False  # PENDING is on the Node (or dry-run, where nothing is)


@dataclass
class Result:
    id: str
    trigger: str
    status: str  # pass | fail | unknown | unavailable
    message: str
    boot: str | None
    requested_at: float  # engine clock (the gate compares it with the node's clean_since)
    at: float  # engine clock
    probes: dict[str, str] = field(default_factory=dict)
    reported: bool = False  # annotation, Event and metric written
    inherited: str = ""  # "record": restored from the Node; "adopted": a previous leader's request, answered here


def startup_tainted(obj: dict[str, Any] | None) -> bool:
    return any(t.get("key") == STARTUP_TAINT and t.get("effect") == STARTUP_EFFECT
               for t in ((obj or {}).get("spec") or {}).get("taints") or [])


def read_request(obj: dict[str, Any] | None) -> tuple[str, tuple[str, ...], str] | str | None:
    """A person's request on the Node: (id, probes, level), the text of why it is unreadable, or None."""
    text = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(REQUEST)
    if text is None:
        return None
    try:
        doc = json.loads(text)
        rid, probes, level = doc["id"], tuple(doc.get("probes") or ()), doc.get("level") or "quick"
    except (ValueError, TypeError, KeyError, AttributeError):
        return f"annotation {REQUEST} is not JSON with an id"
    if not isinstance(rid, str) or not ID_RE.fullmatch(rid):
        return f"annotation {REQUEST}: id must be 1-64 characters of [A-Za-z0-9._:-]"
    if any(p not in PROBE_NAMES for p in probes) or level not in LEVELS:
        return f"annotation {REQUEST}: probes must be of {', '.join(PROBE_NAMES)} and level quick or full"
    return rid, probes, level


def view(obj: dict[str, Any] | None) -> tuple[bool, str | None]:
    """What the Node cache watches for here (a change makes the engine reconcile the node)."""
    ann = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return startup_tainted(obj), ann.get(REQUEST)


def _without_startup_taint(taints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in taints if not (t.get("key") == STARTUP_TAINT and t.get("effect") == STARTUP_EFFECT)]


def _status_of(event_status: str) -> str:
    return {"ok": PASS, "unhealthy": FAIL}.get(event_status, UNKNOWN)


class Validator:
    def __init__(self, engine: "Engine") -> None:
        self.e = engine
        self.cfg: ValidationConfig = engine.cfg.validation
        self.streams: dict[str, "StreamHandle"] = {}  # node -> its latest live stream
        self.pending: dict[str, Request] = {}  # node -> the request sent, awaiting its summary (one at a time)
        self.results: dict[str, Result] = {}  # node -> the latest result
        self.retry: set[str] = set()  # nodes whose latest result is unknown (asked again after retry_seconds)
        self.due: dict[str, float] = {}  # nodes due a periodic validation (tick -> reconcile), since when
        self.counts: dict[tuple[str, str], int] = {}  # (result, trigger) -> n, for the metric
        self.restored: set[str] = set()  # nodes whose records this leader has read (once per node and term)
        # A summary that came with no request pending, before this leader read the node's records (the agent
        # resends its spool right after its Hello, before the first reconcile): node -> (id, status, text, probes).
        self.unclaimed: dict[str, tuple[str, str, str, dict[str, str]]] = {}
        engine.metrics.validations = self.counts
        engine.metrics.validations_running = lambda: len(self.pending)

    def reset(self) -> None:
        """A lost Lease: the next leader asks again (its state starts empty, level-triggered)."""
        self.streams.clear()
        self.pending.clear()
        self.results.clear()
        self.retry.clear()
        self.due.clear()
        self.restored.clear()
        self.unclaimed.clear()

    # -- stream side (synchronous, on the loop) ---------------------------------------------------------------
    def hello(self, name: str, rebooted: bool) -> None:
        if rebooted:  # a result validates the boot it ran in
            self.pending.pop(name, None)
            self.results.pop(name, None)
            self.unclaimed.pop(name, None)

    def connected(self, name: str, stream: "StreamHandle") -> None:
        """The stream's Welcome is written: requests may go on it now."""
        self.streams[name] = stream
        r = self.results.get(name)
        if r is not None and r.status == UNAVAILABLE and r.reported:
            del self.results[name]  # this stream may handle it (an upgraded agent, a reconnect): ask again
        if self.cfg.enabled:
            self.e._enqueue(name)

    def disconnected(self, stream: "StreamHandle") -> None:
        if self.streams.get(stream.node) is stream:
            del self.streams[stream.node]

    def wants(self, name: str) -> bool:
        """Whether observe() needs this node's new events."""
        return name in self.pending or (self.cfg.enabled and name not in self.restored)

    def observe(self, name: str, events: list[Any]) -> None:
        """New events of the node's current boot: probe findings and the summary of the pending request."""
        q = self.pending.get(name)
        if q is None:
            if name not in self.restored:
                self._keep_unclaimed(name, events)
            return
        for ev in events:
            if not ev.check.startswith("probe."):
                continue
            if ev.check != SUMMARY:
                if ev.status != "ok":
                    q.details.append(f"{ev.check} on {ev.entity}: {ev.status}: {ev.message[:200]}")
                continue
            try:
                doc = json.loads(ev.value or "{}")
                rid = doc.get("request") if isinstance(doc, dict) else None
            except ValueError:
                rid = None
            if rid != q.id:
                log.info("node %s: validation summary for request %r, not the pending %s: ignored", name,
                         str(rid)[:64], q.id)
                continue
            probes = _probes_of(doc)
            details = "; ".join(q.details)
            self._finish(name, q, _status_of(ev.status), ev.message + (f" [{details}]" if details and
                                                                         ev.status != "ok" else ""), probes)
            return

    def _keep_unclaimed(self, name: str, events: list[Any]) -> None:
        for ev in events:
            if ev.check != SUMMARY:
                continue
            try:
                doc = json.loads(ev.value or "{}")
            except ValueError:
                continue
            rid = doc.get("request") if isinstance(doc, dict) else None
            if isinstance(rid, str) and ID_RE.fullmatch(rid):
                self.unclaimed[name] = (rid, _status_of(ev.status), ev.message[:MAX_TEXT], _probes_of(doc))

    def _restore(self, name: str, node: Any, obj: dict[str, Any]) -> None:
        """The previous leader's pending request and latest result for this boot, from the Node (see the module
        docstring: what is recovered may hold the node, never release it)."""
        self.restored.add(name)
        ann = ((obj.get("metadata") or {}).get("annotations") or {})
        now, wall = self.e.clock(), self.e.wall()
        done = _record(ann.get(ANNOTATION))
        if done is not None and done.get("boot") == node.boot_id and name not in self.results \
                and done.get("result") in (PASS, FAIL, UNKNOWN) and done.get("trigger") in TRIGGERS:
            at = now - max(0.0, wall - _wall_of(done.get("time"), wall))
            self._store(name, Result(str(done["request"])[:64], done["trigger"], done["result"],
                                     str(done.get("message") or "")[:MAX_TEXT], node.boot_id, now, at,
                                     _probes_of(done), reported=True, inherited="record"))
            log.info("node %s: validation %s (%s) %s restored from %s", name, done["request"], done["trigger"],
                     done["result"], ANNOTATION)
        sent = _record(ann.get(PENDING))
        if (sent is None or sent.get("boot") != node.boot_id or name in self.pending
                or (done is not None and done.get("request") == sent.get("request"))
                or sent.get("trigger") not in TRIGGERS):
            self.unclaimed.pop(name, None)
            return
        age = max(0.0, wall - _wall_of(sent.get("time"), wall))
        probes = tuple(p for p in sent.get("probes") or () if p in PROBE_NAMES)
        level = sent.get("level") if sent.get("level") in LEVELS else self.cfg.level
        q = Request(str(sent["request"])[:64], sent["trigger"], probes, level, node.boot_id, now,
                    now - age + self.cfg.timeout_seconds, adopted=True, written=True)
        self.pending[name] = q
        log.info("node %s: adopted validation %s (%s), sent %.0fs ago by the previous leader", name, q.id,
                 q.trigger, age)
        late = self.unclaimed.pop(name, None)
        if late is not None and late[0] == q.id:  # answered before this leader read the Node
            self._finish(name, q, late[1], late[2], late[3])

    def tick(self, now: float) -> None:
        """Each engine tick: requests past their deadline are unknown; periodic validations fall due."""
        for name, q in list(self.pending.items()):
            if now >= q.deadline:
                self._finish(name, q, UNKNOWN, f"no result from the agent within {self.cfg.timeout_seconds:g}s of "
                             f"the request (a probe still running, a lost agent): unknown, never a pass", {})
        for name in list(self.retry):
            r = self.results.get(name)
            if r is None or r.status != UNKNOWN:
                self.retry.discard(name)
            elif now - r.at >= self.cfg.retry_seconds:
                self.retry.discard(name)  # once: the reconcile asks again where a gate still holds
                self.e._enqueue(name)
        every = self.cfg.periodic_seconds
        if not self.cfg.enabled or every is None:
            return
        for name, since in list(self.due.items()):
            if now - since > 60.0:  # a reconcile that never came to it (the node left): not counted for ever
                del self.due[name]
        room = self.cfg.limit(len(self.streams)) - len(self.pending) - len(self.due)
        if room <= 0:
            return
        for name, stream in list(self.streams.items()):
            if room <= 0:
                break
            if name in self.pending or name in self.due or not stream.handles_validation:
                continue
            r = self.results.get(name)
            if r is None or now - r.at >= every:
                self.due[name] = now
                room -= 1
                self.e._enqueue(name)

    def _store(self, name: str, r: Result) -> Result:
        self.results[name] = r
        if r.status == UNKNOWN:
            self.retry.add(name)
        else:
            self.retry.discard(name)
        return r

    def _finish(self, name: str, q: Request, status: str, message: str, probes: dict[str, str]) -> None:
        if self.pending.get(name) is q:
            del self.pending[name]
        self._store(name, Result(q.id, q.trigger, status, message[:MAX_TEXT], q.boot, q.sent_at, self.e.clock(),
                                 probes, inherited="adopted" if q.adopted else ""))
        log.info("node %s: validation %s (%s) %s: %s", name, q.id, q.trigger, status, message[:300])
        self.e._enqueue(name)

    def failed_periodic(self, name: str, boot: str | None) -> Result | None:
        """The node's latest result when it is a failed periodic validation of this boot that quarantines (d): the
        engine then judges the node unhealthy, as for a fatal fault, until a later result of this boot replaces it."""
        r = self.results.get(name)
        if (not self.cfg.enabled or self.cfg.periodic_failure != "quarantine" or r is None or r.trigger != "periodic"
                or r.status != FAIL or r.boot != boot):
            return None
        return r

    # -- reconcile (with the Node just read) -------------------------------------------------------------------
    async def reconcile(self, name: str, node: Any, verdict: Any, obj: dict[str, Any] | None, obs: Any, p: Any,
                        done: list[str], device_rules: bool) -> tuple[Any, bool]:
        """Returns the plan (its release held and condition set while a gate holds) and whether Vigil's device
        rules may be deleted."""
        periodic = self.due.pop(name, None) is not None
        if obj is None:
            return p, True
        if name not in self.restored and node.boot_id is not None and self.cfg.enabled:
            self._restore(name, node, obj)
        startup = startup_tainted(obj)
        r = self.results.get(name)
        if r is not None and not r.reported:
            await self._report(name, obj, r, startup and self.cfg.enabled and r.boot == node.boot_id, done)
        manual = read_request(obj)
        if manual is not None:
            await self._manual(name, node, obj, obs, manual, done)
        if not self.cfg.enabled:
            return p, True
        try:
            return self._gates(name, node, verdict, obj, obs, p, periodic, device_rules)
        finally:
            await self._write_pending(name, obj)

    def _gates(self, name: str, node: Any, verdict: Any, obj: dict[str, Any], obs: Any, p: Any, periodic: bool,
               device_rules: bool) -> tuple[Any, bool]:
        from .policy import HEALTHY, RECOVERING

        startup = startup_tainted(obj)
        ok_kinds = (RECOVERING, HEALTHY)
        # (b) the release gate: what the plan would undo waits for a pass requested after the fault cleared
        gated = verdict.kind == HEALTHY and not p.skipped and (p.release or device_rules)
        if gated:
            held = self._gate(name, node, obj, obs, node.clean_since, "release")
            if held is None:
                return p, True
            return self._hold(p, obs, held), False
        # (a) the startup taint
        if startup and verdict.kind in ok_kinds and not p.skipped:
            held = self._gate(name, node, obj, obs, None, "startup")
            if held is not None and held[0] != "pending":
                return self._hold(p, obs, held), True
            return p, True
        # (d) periodic, on an idle node Vigil keeps nothing from
        if periodic:
            if (verdict.kind == HEALTHY and not p.skipped and not obs.tainted and not obs.unschedulable
                    and name not in self.pending):
                self._send(name, node, obj, obs, "periodic")
        return p, True

    def _gate(self, name: str, node: Any, obj: dict[str, Any], obs: Any, since: float | None,
              trigger: str) -> tuple[str, str] | None:
        """None: a pass that counts is there. Else (state, text) of why the node is held; asks when it should."""
        now = self.e.clock()
        r = self.results.get(name)
        if r is not None and (r.boot != node.boot_id or (since is not None and r.requested_at < since)):
            r = None  # an earlier boot's, or from before the fault cleared: it does not count
        if r is not None and r.status == PASS and (r.inherited == "record" or (r.inherited and trigger != "startup")):
            r = None  # a previous leader's pass releases nothing here: ask again (see the module docstring)
        if r is not None and r.status == PASS:
            return None
        q = self.pending.get(name)
        if q is not None:
            return "pending", f"waiting for validation {q.id} ({q.trigger})"  # stable: no rewrite per reconcile
        if r is None or (r.status == UNKNOWN and now - r.at >= self.cfg.retry_seconds):
            r = self._send(name, node, obj, obs, trigger)
            if r is None:
                q = self.pending.get(name)
                return "pending", (f"waiting for validation {q.id} ({trigger})" if q is not None else
                                   "waiting for the node's agent to connect, to ask it to validate")
        return r.status, f"validation {r.id} ({r.trigger}) {r.status}: {r.message}"

    def _hold(self, p: Any, obs: Any, held: tuple[str, str]) -> Any:
        state, text = held
        want = ("False", CONDITION_REASON[state], text[:MAX_TEXT])
        return replace(p, release=False, condition=None if obs.condition == want else want)

    def _send(self, name: str, node: Any, obj: dict[str, Any], obs: Any, trigger: str,
              probes: tuple[str, ...] | None = None, level: str | None = None, rid: str | None = None) -> Result | None:
        """Send a ValidateRequest on the node's stream. Returns the result at once when it cannot be asked (an agent
        that cannot validate; for a person's request, also no agent connected): unavailable. Else None: pending, or
        (no stream yet, or between two) asked when the agent connects (`connected` reconciles the node)."""
        from .._proto.vigil.v1 import health_pb2 as pb

        now = self.e.clock()
        rid = rid or f"v-{uuid.uuid4().hex[:20]}"
        probes = self.cfg.probes if probes is None else probes
        level = level or self.cfg.level
        stream = self.streams.get(name)
        why = ""
        if stream is None or stream.ended.done() or stream.send is None:
            if trigger != "manual":
                return None
            why = "the node's agent is not connected to this aggregator (the leader)"
        elif not stream.handles_validation:
            why = (f"the node's agent ({stream.agent_version or 'an older version'}) does not run validations "
                   f"(its Hello lacks handles_validation): upgrade it")
        q = Request(rid, trigger, tuple(probes), level, node.boot_id, now, now + self.cfg.timeout_seconds)
        if why:
            r = self._store(name, Result(rid, trigger, UNAVAILABLE, f"validation unavailable: {why}",
                                                node.boot_id, now, now))
            log.warning("node %s: validation (%s) unavailable: %s", name, trigger, why)
            self.e._enqueue(name)  # reconciled again when this one ends: the result is reported then
            return r
        quarantined = bool(obs.tainted) or startup_tainted(obj)  # what the Node shows: dry-run's taint is no taint
        stream.send(pb.AggregatorMessage(validate=pb.ValidateRequest(
            request_id=rid, probes=list(probes), level=level, quarantined=quarantined,
            timeout_seconds=int(min(self.cfg.timeout_seconds, 86400)))))
        self.pending[name] = q  # the latest result stays until this one's comes (the gate asks `pending` first)
        q.written = bool(self.e.cfg.dry_run)  # else _write_pending records it on the Node for the next leader
        log.info("node %s: asked its agent to validate (%s, request %s, probes %s, level %s%s)", name, trigger, rid,
                 ",".join(probes) or "(the agent's)", level, ", quarantined" if quarantined else "")
        return None

    async def _write_pending(self, name: str, obj: dict[str, Any]) -> None:
        """The request just sent, on the Node (PENDING), so that a new leader adopts it rather than asking again
        an agent that is still running it. A failed write costs only that (logged): this leader has it."""
        from .kube import now_iso

        q = self.pending.get(name)
        if q is None or q.written:
            return
        q.written = True
        value = json.dumps({"request": q.id, "trigger": q.trigger, "boot": q.boot, "probes": list(q.probes),
                            "level": q.level, "time": now_iso(self.e.wall())}, sort_keys=True, separators=(",", ":"))

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            ann = (n.get("metadata") or {}).get("annotations") or {}
            if ann.get(PENDING) == value:
                return None
            n = json.loads(json.dumps(n))
            n.setdefault("metadata", {})["annotations"] = {**ann, PENDING: value}
            return n

        e = self.e
        try:
            e._check_leader()
            await e._io(lambda: e.kube.update_node(name, change, current=obj))  # type: ignore[union-attr]
        except Exception as ex:  # noqa: BLE001 - the request stands; only a next leader would ask it again
            log.warning("node %s: recording validation %s in %s: %s", name, q.id, PENDING, ex)

    async def _manual(self, name: str, node: Any, obj: dict[str, Any], obs: Any,
                      manual: tuple[str, tuple[str, ...], str] | str, done: list[str]) -> None:
        now = self.e.clock()
        if isinstance(manual, str):
            rid = f"bad-{((obj.get('metadata') or {}).get('resourceVersion') or '0')}"
            if (self.results.get(name) or Result("", "", "", "", None, 0, 0)).id != rid:
                r = self._store(name, Result(rid, "manual", UNKNOWN, manual, node.boot_id, now, now))
                await self._report(name, obj, r, False, done)
            return
        rid, probes, level = manual
        q, r = self.pending.get(name), self.results.get(name)
        if (q is not None and q.id == rid) or (r is not None and r.id == rid):
            return  # asked already (its result, once written, removes the annotation)
        if not self.cfg.enabled:
            r = self._store(name, Result(rid, "manual", UNAVAILABLE, "validation unavailable: validation is "
                                                 "disabled on this aggregator (serve --validation)", node.boot_id,
                                                 now, now))
            await self._report(name, obj, r, False, done)
            return
        if q is not None:
            r = self._store(name, Result(rid, "manual", UNKNOWN, f"not run: validation {q.id} ({q.trigger}) is "
                                                 "still running on this node (one at a time); ask again later",
                                                 node.boot_id, now, now))
            await self._report(name, obj, r, False, done)
            return
        r = self._send(name, node, obj, obs, "manual", probes, level, rid)
        if r is not None:
            await self._report(name, obj, r, False, done)

    async def _report(self, name: str, obj: dict[str, Any], r: Result, remove_taint: bool, done: list[str]) -> None:
        """The result on the Node (annotation; the startup taint removed on a pass), an Event, the metric."""
        from .kube import now_iso

        e, m = self.e, self.e.metrics
        remove_taint = remove_taint and r.status == PASS
        record = json.dumps({"request": r.id, "result": r.status, "trigger": r.trigger, "time": now_iso(e.wall()),
                             "probes": r.probes, "message": r.message[:MAX_TEXT], "boot": r.boot}, sort_keys=True,
                            separators=(",", ":"))
        if e.cfg.dry_run:
            log.info("dry-run: node %s: validation %s %s; would annotate %s%s", name, r.id, r.status, ANNOTATION,
                     f" and remove its taint {STARTUP_TAINT}:{STARTUP_EFFECT}" if remove_taint else "")
            m.bump(m.actions, ("validation", "dry_run"))
            done.append("would-validation-" + ("release" if remove_taint else "report"))
            self._counted(r)
            return

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            n = json.loads(json.dumps(n))
            meta = n.setdefault("metadata", {})
            ann = dict(meta.get("annotations") or {})
            before = (dict(ann), list((n.get("spec") or {}).get("taints") or []))
            ann[ANNOTATION] = record
            if _record(ann.get(PENDING)) is None or (_record(ann.get(PENDING)) or {}).get("request") == r.id:
                ann.pop(PENDING, None)  # answered: nothing for a next leader to adopt
            req = read_request(n)
            if isinstance(req, str) or (req is not None and req[0] == r.id):
                ann.pop(REQUEST, None)  # answered (or unreadable): the person's request is done
            meta["annotations"] = ann
            if remove_taint:
                spec = n.setdefault("spec", {})
                spec["taints"] = _without_startup_taint(list(spec.get("taints") or []))
            return None if (ann, (n.get("spec") or {}).get("taints") or []) == before else n

        e._check_leader()
        await e._io(lambda: e.kube.update_node(name, change, current=obj))  # type: ignore[union-attr]
        self._counted(r)
        m.bump(m.actions, ("validation", "ok"))
        done.append(f"validation:{r.status}")
        probes = ", ".join(f"{k} {v}" for k, v in r.probes.items())
        if remove_taint:
            text = (f"Vigil removed the startup taint {STARTUP_TAINT}:{STARTUP_EFFECT} from {name}: validation {r.id} "
                    f"passed" + (f" ({probes})" if probes else ""))
            log.info("node %s: %s", name, text)
            done.append("validation-release")
            await e._event(obj, "validation", r.id, "VigilValidated", text, "Normal")
            return
        text = f"validation {r.id} ({r.trigger}) {r.status}" + (f" ({probes})" if probes else "") + f": {r.message}"
        if r.status != PASS and (startup_tainted(obj) or observe_tainted(obj)):
            text = text[:800] + "; the node stays out of the schedule (only a pass lets it in)"
        await e._event(obj, "validation", r.id, EVENT_REASON[r.status], text,
                       "Normal" if r.status == PASS else "Warning")

    def _counted(self, r: Result) -> None:
        r.reported = True
        key = (r.status, r.trigger)
        self.counts[key] = self.counts.get(key, 0) + 1


def _probes_of(doc: Any) -> dict[str, str]:
    """A summary's or a record's per-probe results (name -> result), bounded: what the agent or the Node says."""
    probes = doc.get("probes") if isinstance(doc, dict) and isinstance(doc.get("probes"), dict) else {}
    return {str(k)[:32]: str(v)[:16] for k, v in list(probes.items())[:16]}


def _record(text: Any) -> dict[str, Any] | None:
    """One of Vigil's JSON annotations, or None when absent or unreadable (then nothing is recovered from it)."""
    if not isinstance(text, str) or len(text) > 16384:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("request"), str) or not ID_RE.fullmatch(doc["request"]):
        return None
    return doc


def _wall_of(text: Any, default: float) -> float:
    """Unix time of an annotation's "time" (now_iso's format); `default` when unreadable or in the future."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default
    return min(t, default)


def observe_tainted(obj: dict[str, Any] | None) -> bool:
    from .policy import observe

    return observe(obj).tainted


__all__ = ["ANNOTATION", "PENDING", "REQUEST", "STARTUP_TAINT", "ValidationConfig", "Validator", "read_request",
           "startup_tainted"]
