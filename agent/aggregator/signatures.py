"""Floods and job signatures at the aggregator (DESIGN §9, issue 14). Pure: every function takes the aggregator's
monotonic `now`; the engine feeds events in and asks, when it judges a node, which faults to leave out.

- Episodes: repeated identical findings (node, check, entity, and the Xid code or the message's head) are one
  episode with a count and first/last seen, not one event each. Only an episode's first event costs anything
  (an owner lookup); a flood of 800,000 lines of 29 distinct errors is 29 episodes. Bounded (MAX_EPISODES, the
  idle ones go first) and an episode idle for a window ends.
- Signatures: an application-class fault (APPLICATION_XIDS, the Xid catalogue's "the application faulted" class)
  seen on at least K nodes that run GPU pods of the same owner (Job, JobSet, PyTorchJob, Deployment, ...) within
  the window is that job's signature, not hardware: it is reported once (an Event on the owner, a metric), and no
  node is quarantined for it. So that the correlation comes before a quarantine, an application-class fault that
  is fatal (an operator's severity override) is held for the window first; after it, with no signature, it is
  judged like any other. Hardware-class faults (every other check and code) are never held nor suppressed.
- The aggregator does not import node-side code (the import contract): APPLICATION_XIDS duplicates the class
  from agent/sources/gpu_events/xid.py, and tests/aggregator/test_signatures.py checks that the two agree. The
  code is read from the agent's message ("Xid 13: ..." is how its rules name an Xid finding).
"""
from __future__ import annotations

import json

import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

# Xids whose recommended action is "none for the node: the application faulted" (xid.A_NONE_APP).
APPLICATION_XIDS = frozenset({
    8, 11, 13, 25, 31, 32, 39, 40, 41, 43, 44, 60, 68, 69, 70, 71, 72, 75, 76, 77, 80, 82, 83, 84, 85, 86, 88, 89,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 137, 139})
XID_CHECK = "gpu.xid"
MAX_EPISODES = 100_000
MAX_FAULTS_PER_NODE = 64
# Kept on the Lease across a leader change (one annotation, next to the ledger; the Lease's annotations share 256 KiB)
MAX_PERSISTED_SIGNATURES = 100
MAX_PERSISTED_FAULTS = 2000
MAX_RECORD_BYTES = 96 * 1024
GPU_RESOURCE = re.compile(r"(^|/)(gpu|mig-)|gpu\.|\.gpu", re.ASCII)  # nvidia.com/gpu, amd.com/gpu, nvidia.com/mig-*
_XID = re.compile(r"Xid (\d{1,5})\b", re.ASCII)


def xid_code(check: str, message: str) -> int | None:
    if check != XID_CHECK:
        return None
    m = _XID.match(message or "")
    return int(m.group(1)) if m else None


def application_class(check: str, message: str) -> bool:
    return xid_code(check, message) in APPLICATION_XIDS


# The Kubernetes calls correlation makes (tests/deploy checks that components/job-signatures grants exactly these,
# and tests/aggregator that the requests seen at the fake API server are among them): (group, resource, verb,
# cluster-wide).
API_CALLS = frozenset({("", "pods", "list", True), ("", "events", "create", True)})


@dataclass(frozen=True)
class SignatureConfig:
    enabled: bool = False  # --job-signatures (it reads every node's pods: RBAC in components/job-signatures)
    nodes: int = 3  # K: this many nodes of one owner within the window is the job's signature
    window: float = 60.0  # also the hold: how long a fatal application-class fault waits for the correlation

    def __post_init__(self) -> None:
        if not (isinstance(self.nodes, int) and 2 <= self.nodes <= 100_000):
            raise ValueError(f"signature nodes: expected 2..100000, got {self.nodes!r}")
        if not 0 < self.window <= 86400:
            raise ValueError(f"signature window: expected 0 < seconds <= 86400, got {self.window!r}")


@dataclass
class Episode:
    count: int
    first: float
    last: float


@dataclass(frozen=True)
class Owner:
    namespace: str
    kind: str
    name: str
    api_version: str = ""
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def owner_of(pod: dict[str, Any]) -> Owner | None:
    """The workload a pod belongs to, from what the pod carries (no further reads): a JobSet from its label, a
    Deployment from its ReplicaSet's name and the pod-template-hash label, else the controller ownerReference.
    DaemonSet pods (agents, exporters: on every node by design) and bare pods have none."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(meta, dict):
        return None
    ns = meta.get("namespace") or ""
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    owners = meta.get("ownerReferences")
    refs = [r for r in owners if isinstance(r, dict) and r.get("controller")] if isinstance(owners, list) else []
    if not refs or not isinstance(ns, str):
        return None
    ref = refs[0]
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    if not kind or not name or kind == "DaemonSet":
        return None
    jobset = labels.get("jobset.sigs.k8s.io/jobset-name")
    if isinstance(jobset, str) and jobset:
        return Owner(ns, "JobSet", jobset, "jobset.x-k8s.io/v1alpha2")
    tmpl = labels.get("pod-template-hash")
    if kind == "ReplicaSet" and isinstance(tmpl, str) and tmpl and name.endswith("-" + tmpl):
        return Owner(ns, "Deployment", name[: -len(tmpl) - 1], "apps/v1")
    return Owner(ns, kind, name, str(ref.get("apiVersion") or ""), str(ref.get("uid") or ""))


def gpu_pod(pod: dict[str, Any]) -> bool:
    """A pod that holds GPUs: a container requests a GPU resource (device plugin) or the pod has DRA claims."""
    spec = pod.get("spec") if isinstance(pod, dict) else None
    if not isinstance(spec, dict):
        return False
    if spec.get("resourceClaims"):
        return True
    def items(v: Any) -> list:
        return v if isinstance(v, list) else []
    for c in items(spec.get("containers")) + items(spec.get("initContainers")):
        res = c.get("resources") if isinstance(c, dict) else None
        if not isinstance(res, dict):
            continue
        for part in ("limits", "requests"):
            names = res.get(part)
            if isinstance(names, dict) and any(isinstance(k, str) and GPU_RESOURCE.search(k) for k in names):
                return True
    return False


def running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") if isinstance(pod, dict) else None
    return isinstance(status, dict) and status.get("phase") in ("Running", "Pending", "Failed")


@dataclass
class Signature:
    owner: Owner
    since: float
    nodes: set[str] = field(default_factory=set)
    codes: set[int] = field(default_factory=set)
    faults: int = 0
    reported: bool = False  # handed to the reporter (correlate returns a signature once)
    evented: bool = False  # its Event was written (a new leader writes it when the old one did not)


class Correlator:
    def __init__(self, cfg: SignatureConfig) -> None:
        self.cfg = cfg
        self.episodes: OrderedDict[tuple[str, str, str, str], Episode] = OrderedDict()
        self.faults: dict[str, deque] = {}  # node -> (time, code) of application-class faults, newest last
        self.owners: dict[str, tuple[float, frozenset[Owner]]] = {}  # node -> (when read, GPU pod owners)
        self.signatures: dict[Owner, Signature] = {}
        self.held: dict[tuple[str, str, str], float] = {}  # (node, check, entity) -> first seen (the hold)
        self.absolved: set[tuple[str, str, str]] = set()  # faults that were part of a signature, until they clear
        self.repeats = 0  # events folded into an episode
        self.dropped = 0  # episodes forgotten to stay within MAX_EPISODES

    # -- episodes -----------------------------------------------------------------------------------------
    def episode(self, node: str, check: str, entity: str, message: str, now: float) -> tuple[bool, Episode]:
        """(new, the episode) for one finding. An episode idle longer than the window is over."""
        code = xid_code(check, message)
        key = (node, check, entity, str(code) if code is not None else (message or "")[:80])
        ep = self.episodes.get(key)
        if ep is not None and now - ep.last <= self.cfg.window:
            ep.count += 1
            ep.last = now
            self.episodes.move_to_end(key)
            self.repeats += 1
            return False, ep
        ep = self.episodes[key] = Episode(1, now, now)
        self.episodes.move_to_end(key)
        while len(self.episodes) > MAX_EPISODES:
            self.episodes.popitem(last=False)
            self.dropped += 1
        return True, ep

    # -- application faults and owners ----------------------------------------------------------------------
    def fault(self, node: str, check: str, entity: str, message: str, now: float) -> bool:
        """Record an application-class fault; True when the node's owners should be (re)read."""
        code = xid_code(check, message)
        if code not in APPLICATION_XIDS:
            return False
        ring = self.faults.setdefault(node, deque(maxlen=MAX_FAULTS_PER_NODE))
        ring.append((now, code))
        self.held.setdefault((node, check, entity), now)
        while len(self.held) > MAX_EPISODES:
            self.held.pop(next(iter(self.held)))
        seen = self.owners.get(node)
        return seen is None or now - seen[0] > self.cfg.window / 2

    def set_owners(self, node: str, pods: Iterable[dict[str, Any]], now: float) -> None:
        owners = frozenset(o for o in (owner_of(p) for p in pods if gpu_pod(p) and running(p)) if o is not None)
        self.owners[node] = (now, owners)

    def correlate(self, now: float) -> list[Signature]:
        """Signatures that reached K nodes now and were not reported yet (the caller reports each once)."""
        self._expire(now)
        by_owner: dict[Owner, set[str]] = {}
        codes: dict[Owner, set[int]] = {}
        counts: dict[Owner, int] = {}
        for node, ring in self.faults.items():
            recent = [(t, c) for t, c in ring if now - t <= self.cfg.window]
            if not recent:
                continue
            for o in self.owners.get(node, (0.0, frozenset()))[1]:
                by_owner.setdefault(o, set()).add(node)
                codes.setdefault(o, set()).update(c for _, c in recent)
                counts[o] = counts.get(o, 0) + len(recent)
        out = []
        for o, nodes in by_owner.items():
            sig = self.signatures.get(o)
            if sig is None and len(nodes) >= self.cfg.nodes:
                sig = self.signatures[o] = Signature(o, now)
            if sig is not None:
                self.absolved.update(k for k in self.held if k[0] in nodes)
                sig.nodes |= nodes
                sig.codes |= codes[o]
                sig.faults = max(sig.faults, counts[o])
                if not sig.reported:
                    sig.reported = True
                    out.append(sig)
        return out

    def _expire(self, now: float) -> None:
        w = self.cfg.window
        for o in [o for o, s in self.signatures.items()
                  if not any(self._recent(n, now) for n in s.nodes) and now - s.since > w]:
            del self.signatures[o]
        for node in [n for n, ring in self.faults.items() if not ring or now - ring[-1][0] > 2 * w]:
            del self.faults[node]
            self.owners.pop(node, None)

    def _recent(self, node: str, now: float) -> bool:
        ring = self.faults.get(node)
        return bool(ring) and now - ring[-1][0] <= self.cfg.window

    # -- what judging leaves out ---------------------------------------------------------------------------------
    def in_signature(self, node: str) -> Signature | None:
        return next((s for s in self.signatures.values() if node in s.nodes), None)

    def ignore(self, node: str, check: str, entity: str, message: str, now: float) -> bool:
        """Leave this fatal fault out of the node's verdict? Only an application-class one: while it is held (the
        window since it was first seen, for the correlation to come first), or while its node is part of a job's
        signature."""
        if not application_class(check, message):
            return False
        if (node, check, entity) in self.absolved or self.in_signature(node) is not None:
            return True
        first = self.held.setdefault((node, check, entity), now)  # a fault known from a digest starts its hold
        return now - first < self.cfg.window

    def forget(self, node: str, keys: Iterable[tuple[str, str]]) -> None:
        """The node's faults that are gone (ok again): their holds end."""
        for check, entity in keys:
            self.held.pop((node, check, entity), None)
            self.absolved.discard((node, check, entity))

    # -- across a leader change (remedy.Signatures keeps this on the Lease) -------------------------------------
    def export(self, now: float, wall: float) -> dict[str, Any]:
        """What a new leader needs so that a signature's suppression survives it: the signatures (times as wall
        clock) and the faults they absolved. Bounded (MAX_PERSISTED_*, newest signatures first); what does not fit
        is left out, and a fault left out is judged as any other (quarantined after its hold: never fail open)."""
        sigs = sorted(self.signatures.values(), key=lambda x: -x.since)[:MAX_PERSISTED_SIGNATURES]
        keys = sorted(self.absolved)[:MAX_PERSISTED_FAULTS]
        while True:
            nodes: dict[str, list[list[str]]] = {}
            for node, check, entity in keys:
                nodes.setdefault(node, []).append([check, entity])
            doc = {"v": 1, "signatures": [
                {"owner": [x.owner.namespace, x.owner.kind, x.owner.name, x.owner.api_version, x.owner.uid],
                 "since": round(wall - (now - x.since), 3), "nodes": sorted(x.nodes)[:MAX_PERSISTED_FAULTS],
                 "codes": sorted(x.codes), "faults": x.faults, "evented": x.evented} for x in sigs],
                "absolved": nodes}
            # within MAX_RECORD_BYTES (strings are bounded, so this ends): the oldest signatures go first, then faults
            if len(json.dumps(doc, separators=(",", ":"))) <= MAX_RECORD_BYTES or (not sigs and not keys):
                return doc
            if len(sigs) > 1:  # halved: a few serialisations at most, on the event loop
                sigs = sigs[: len(sigs) // 2]
            else:
                keys = keys[: len(keys) // 2]
                if not keys:
                    sigs = []

    def restore(self, doc: Any, now: float, wall: float) -> int:
        """A new leader takes over what the last one kept (export's document): its signatures and the faults they
        absolved replace what this replica remembered. Returns the signatures restored; a document that cannot be
        read restores nothing (ValueError says why)."""
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not a version-1 signature record")
        sigs: dict[Owner, Signature] = {}
        for item in doc.get("signatures") or []:
            o = item.get("owner") if isinstance(item, dict) else None
            if not (isinstance(o, list) and len(o) == 5 and all(isinstance(v, str) for v in o)):
                raise ValueError(f"bad signature entry {str(item)[:120]}")
            since = item.get("since")
            if not isinstance(since, (int, float)) or since != since:
                raise ValueError(f"bad signature time {since!r}")
            owner = Owner(*o)
            sigs[owner] = Signature(owner, now - max(0.0, wall - float(since)),
                                    {n for n in item.get("nodes") or [] if isinstance(n, str)},
                                    {c for c in item.get("codes") or [] if isinstance(c, int)},
                                    int(item.get("faults") or 0) if isinstance(item.get("faults"), int) else 0,
                                    reported=True, evented=bool(item.get("evented")))
        absolved: set[tuple[str, str, str]] = set()
        for node, keys in (doc.get("absolved") or {}).items():
            for key in keys if isinstance(keys, list) else []:
                if isinstance(key, list) and len(key) == 2 and all(isinstance(v, str) for v in key):
                    absolved.add((node, key[0], key[1]))
        self.signatures = sigs
        self.absolved = absolved
        return len(sigs)


def owner_event(sig: Signature, namespace_default: str, instance: str, wall_iso: str, window: float) -> dict:
    """One Event on the owner (kubectl describe job/... shows it): the signature, its nodes and codes."""
    import hashlib

    o = sig.owner
    nodes = sorted(sig.nodes)
    shown = ", ".join(nodes[:20]) + (f" and {len(nodes) - 20} more" if len(nodes) > 20 else "")
    codes = ", ".join(f"Xid {c}" for c in sorted(sig.codes))
    digest = hashlib.sha256(f"{o}\0{o.uid}\0{sig.since}".encode()).hexdigest()[:16]
    name = f"{o.name[:200]}.vigil-signature-{digest}"
    msg = (f"Vigil: {codes} (application class) on {len(nodes)} nodes running {o} within {window:g}s: the job's "
           f"signature, not hardware; none of these nodes is quarantined for it. Nodes: {shown}")
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": o.namespace or namespace_default},
            "involvedObject": {"apiVersion": o.api_version, "kind": o.kind, "name": o.name,
                               "namespace": o.namespace, "uid": o.uid},
            "reason": "VigilJobSignature", "message": msg[:1024], "type": "Warning",
            "source": {"component": "vigil-aggregator"}, "reportingComponent": "vigil.dev/aggregator",
            "reportingInstance": instance[:128], "firstTimestamp": wall_iso, "lastTimestamp": wall_iso,
            "count": max(1, sig.faults)}


__all__ = ["APPLICATION_XIDS", "Correlator", "Episode", "Owner", "Signature", "SignatureConfig", "application_class",
           "gpu_pod", "owner_event", "owner_of", "xid_code"]
