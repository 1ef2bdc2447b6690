"""Partial drain, opt-in by policy (DESIGN §9, issue 14): after Vigil quarantines a device or a node, evict the pods
that hold the sick device, or every GPU pod of the node, where the pods' namespace (or a label selector) asks for
it. Pure selection here (which policy applies, which pods, who owns them) and one runner per node (`Drain`).

- Policies: none (the default), device (the pods that hold the sick device), all (every GPU pod of the node).
  `--drain KEY=POLICY`, repeatable: KEY a namespace, `*` (every other namespace), or `selector:k=v[,k=v]` (pods
  whose labels match; selectors first, in the order given, then the namespace, then `*`).
- Attribution (device), first that applies:
  1. DRA: the ResourceClaims the pod names (spec.resourceClaims, status.resourceClaimStatuses) whose
     status.allocation.devices.results name the sick device (driver, pool, device). A pod with claims is judged by
     them alone, when the sick GPU maps to a DRA device (else its claims cannot say, and 2. applies).
  2. PodResources: a pod without claims (a device-plugin pod: nvidia.com/gpu, amd.com/gpu) that the node's agent
     named as holding the sick GPU (Event.holders / Problem.holders, from the kubelet's PodResources on the node).
     The name is a claim, checked against the API: only a pod the API lists on that node (spec.nodeName), not
     finished, holding GPUs, is evicted or named; a name that is not such a pod is refused and reported, never
     acted on. When the agent named holders, a device-plugin pod it did not name is on a healthy GPU.
  3. Neither (an older agent, no PodResources on the node, nobody on the GPU): such pods are not evicted under
     `device`, and the report says they are unattributable.
  A node-wide fault makes every GPU of the node sick: `device` then means every GPU pod.
- Never evicted: the agent (its ServiceAccount), DaemonSet pods, mirror (static) pods, pods that tolerate Vigil's
  taint explicitly (a toleration naming vigil.dev/unhealthy), pods already finished.
- Eviction through the Eviction API, so PodDisruptionBudgets hold: a 429 is waited on (retried every
  `retry` seconds), never forced; at the deadline Vigil reports what is left and stops. Dry-run evicts nothing.
- Blast radius: the Events and the node annotation (vigil.dev/v1.drain) name every affected pod and its owner.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from .signatures import gpu_pod, owner_of

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

log = logging.getLogger(__name__)

# The Kubernetes calls a drain makes (components/drain grants exactly these): (group, resource, verb, cluster-wide).
API_CALLS = frozenset({("", "pods", "list", True), ("", "pods/eviction", "create", True),
                       ("resource.k8s.io", "resourceclaims", "get", True)})
NONE, DEVICE, ALL = "none", "device", "all"
POLICIES = (NONE, DEVICE, ALL)
TAINT_KEY = "vigil.dev/unhealthy"
ANNOTATION = "vigil.dev/v1.drain"
MAX_NAMED = 50  # pods named in one Event (the rest counted); the annotation keeps up to MAX_RECORDED
MAX_RECORDED = 200
DRA_CLAIM, POD_RESOURCES, NODE_WIDE = "DRA claim", "PodResources", "node-wide"  # how a pod was attributed
UNATTRIBUTABLE = "unattributable"


@dataclass(frozen=True)
class DrainConfig:
    rules: tuple[tuple[str, str], ...] = ()  # (key, policy): key a namespace, "*", or "selector:k=v,..."
    deadline: float = 600.0
    retry: float = 5.0
    agent_service_accounts: tuple[str, ...] = ("vigil:vigil-agent",)  # NS:NAME, never evicted

    @property
    def enabled(self) -> bool:
        return any(p != NONE for _, p in self.rules)

    @staticmethod
    def parse(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
        """`--drain KEY=POLICY` values; ValueError names the bad one."""
        out = []
        for item in items:
            key, sep, policy = item.rpartition("=")
            if not sep or not key or policy not in POLICIES:
                raise ValueError(f"--drain: expected NAMESPACE=POLICY, *=POLICY or selector:k=v=POLICY with POLICY "
                                 f"one of {', '.join(POLICIES)}, got {item!r}")
            if key.startswith("selector:"):
                _selector(key[len("selector:"):], item)
            out.append((key, policy))
        return tuple(out)


def _selector(text: str, item: str = "") -> dict[str, str]:
    sel = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"--drain: a selector is k=v[,k=v], got {item or text!r}")
        sel[k.strip()] = v.strip()
    return sel


def _d(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list:
    return v if isinstance(v, list) else []


def policy_for(pod: dict[str, Any], cfg: DrainConfig) -> str:
    meta = _d(_d(pod).get("metadata"))
    labels = _d(meta.get("labels"))
    for key, policy in cfg.rules:
        if key.startswith("selector:") and all(labels.get(k) == v
                                               for k, v in _selector(key[len("selector:"):]).items()):
            return policy
    ns = meta.get("namespace")
    by_ns = dict((k, p) for k, p in cfg.rules if not k.startswith("selector:"))
    return by_ns.get(ns, by_ns.get("*", NONE))


def protected(pod: dict[str, Any], cfg: DrainConfig) -> str:
    """Why this pod is never evicted ("" when it may be)."""
    meta, spec = _d(_d(pod).get("metadata")), _d(_d(pod).get("spec"))
    sa = f"{meta.get('namespace')}:{spec.get('serviceAccountName') or spec.get('serviceAccount') or 'default'}"
    if sa in cfg.agent_service_accounts:
        return "the Vigil agent"
    if any(isinstance(r, dict) and r.get("kind") == "DaemonSet" for r in _l(meta.get("ownerReferences"))):
        return "a DaemonSet pod"
    if "kubernetes.io/config.mirror" in _d(meta.get("annotations")):
        return "a static pod"
    if any(isinstance(t, dict) and t.get("key") == TAINT_KEY for t in _l(spec.get("tolerations"))):
        return f"it tolerates {TAINT_KEY}"
    if _d(pod.get("status")).get("phase") in ("Succeeded", "Failed"):
        return "it has finished"
    return ""


def claim_names(pod: dict[str, Any]) -> list[str]:
    """The ResourceClaims a pod uses: named directly, or generated from a template (status says which)."""
    spec, status = _d(_d(pod).get("spec")), _d(_d(pod).get("status"))
    out = [c.get("resourceClaimName") for c in _l(spec.get("resourceClaims")) if isinstance(c, dict)]
    out += [c.get("resourceClaimName") for c in _l(status.get("resourceClaimStatuses")) if isinstance(c, dict)]
    return sorted({n for n in out if isinstance(n, str) and n})


def claim_holds(claim: dict[str, Any], targets: Iterable[tuple[str, str, str]]) -> bool:
    want = set(targets)
    results = _l(_d(_d(_d(_d(claim).get("status")).get("allocation")).get("devices")).get("results"))
    return any(isinstance(r, dict) and _hashable(r) and (r.get("driver"), r.get("pool"), r.get("device")) in want
               for r in results)


def _hashable(r: dict) -> bool:
    return all(isinstance(r.get(k), (str, type(None))) for k in ("driver", "pool", "device"))


def owner_text(pod: dict[str, Any]) -> str:
    o = owner_of(pod)
    return f"{o.kind} {o.name}" if o is not None else "no owner"


@dataclass
class Report:
    """What one drain did, for its Events and the node annotation."""

    node: str
    reason: str
    affected: list[dict[str, str]] = field(default_factory=list)  # {pod, owner, policy, state, why, via}
    unattributed: list[str] = field(default_factory=list)  # pods under `device` Vigil could not attribute
    refused: list[str] = field(default_factory=list)  # holders the agent named that are no GPU pod of the node
    via: dict[str, str] = field(default_factory=dict)  # pod -> how it was attributed (DRA_CLAIM, POD_RESOURCES...)

    def record(self, pod: dict[str, Any], policy: str, state: str, why: str = "") -> None:
        meta = _d(pod.get("metadata"))
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        row = {"pod": key, "owner": owner_text(pod), "policy": policy, "state": state, "why": why}
        if key in self.via:
            row["via"] = self.via[key]
        self.affected.append(row)

    def attribution(self) -> str:
        """How the pods were chosen, for the Events: 'attribution: DRA claim, PodResources (...)', and the names
        the agent gave that the API refuted."""
        used = sorted(set(self.via.values()))
        parts = ["attribution: " + ", ".join(
            f"{POD_RESOURCES} (named by the node's agent, checked against the API)" if u == POD_RESOURCES else u
            for u in used)] if used else []
        if self.refused:
            parts.append(f"refused {len(self.refused)} pod name(s) the agent gave that are no running GPU pod of "
                         f"{self.node}: " + ", ".join(self.refused[:8]))
        return "; ".join(parts)

    def text(self, states: Iterable[str] | None = None, unattributable: bool | None = None) -> str:
        """The rows in `states`; `unattributable` True: only those (named without the shared why), False: none."""
        rows = [a for a in self.affected if (states is None or a["state"] in states)
                and (unattributable is None or a["why"].startswith(UNATTRIBUTABLE) == unattributable)]
        shown = "; ".join(f"{a['pod']} ({a['owner']}){': ' + a['why'] if a['why'] and not unattributable else ''}"
                          for a in rows[:MAX_NAMED])
        more = f"; and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else ""
        return (shown + more) or "none"

    def annotation(self) -> str:
        return json.dumps({"reason": self.reason, "pods": self.affected[:MAX_RECORDED],
                           "more": max(0, len(self.affected) - MAX_RECORDED),
                           "unattributed": self.unattributed[:MAX_RECORDED],
                           **({"refused": self.refused[:MAX_RECORDED]} if self.refused else {})},
                          sort_keys=True, separators=(",", ":"))


class Drain:
    """The drains of one replica: at most one per node at a time, each a background task with a deadline."""

    def __init__(self, engine: "Engine") -> None:
        self.e = engine
        self.cfg: DrainConfig = engine.cfg.drain
        self.jobs: dict[str, tuple[str, asyncio.Task]] = {}  # node -> (episode, task)
        self.reports: list[Report] = []  # finished, for tests and the demo

    def start(self, node: str, episode: str, reason: str, targets: list[tuple[str, str, str]] | None,
              holders: Iterable[str] = ()) -> None:
        """`targets`: the sick devices (driver, pool, device); None for a node-wide fault (every GPU is sick).
        `holders`: "namespace/pod" the node's agent says hold the sick GPUs (PodResources), checked before use."""
        if not self.cfg.enabled or self.e.kube is None or self.e._loop is None:
            return
        holders = tuple(sorted(set(holders)))
        job = self.jobs.get(node)
        if holders:  # a later report naming other holders (the agent's first had none yet) is drained too
            episode = f"{episode}/holders:{','.join(holders)}"
        elif job is not None and job[0].startswith(f"{episode}/holders:"):
            return  # a report without the names (an agent restarting) after a drain by them: nothing new
        if job is not None and (job[0] == episode or not job[1].done()):
            return
        task = self.e._loop.create_task(self._run(node, reason, targets, holders))
        self.jobs[node] = (episode, task)

    def stop_all(self) -> None:
        for _, task in self.jobs.values():
            task.cancel()
        self.jobs.clear()

    async def _pods(self, node: str) -> list[dict[str, Any]]:
        from .remedy import _quote

        return await self.e._io(lambda: self.e.kube._req(  # type: ignore[union-attr]
            "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3D" + _quote(node)).get("items") or [])

    async def _claim(self, ns: str, name: str) -> dict[str, Any] | None:
        from .kube import NotFound

        version = self.e.remedy.version or "v1"  # as discovered for DeviceTaintRules
        try:
            return await self.e._io(lambda: self.e.kube._req(  # type: ignore[union-attr]
                "GET", f"/apis/resource.k8s.io/{version}/namespaces/{{namespace}}/resourceclaims/{{name}}",
                {"namespace": ns, "name": name}))
        except NotFound:
            return None

    async def select(self, node: str, reason: str, targets: list[tuple[str, str, str]] | None,
                     holders: Iterable[str] = ()) -> tuple[Report, list[dict[str, Any]]]:
        report = Report(node, reason)
        chosen = []
        named = set(holders)
        pods = await self._pods(node)
        if targets is not None and named:
            # the agent's word is a claim: only a GPU pod the API has on this node, not finished, is taken
            listed = {f"{_d(p.get('metadata')).get('namespace')}/{_d(p.get('metadata')).get('name')}": p
                      for p in pods if _d(p.get("spec")).get("nodeName") == node}
            for n in sorted(named):
                p = listed.get(n)
                if p is None or not gpu_pod(p) or _d(p.get("status")).get("phase") in ("Succeeded", "Failed"):
                    report.refused.append(n)
            if report.refused:
                log.warning("node %s: drain: the agent named pod(s) %s as holding the sick GPU, but the API has no "
                            "such running GPU pod on the node: not evicted", node, ", ".join(report.refused[:8]))
            named -= set(report.refused)
        for pod in pods:
            policy = policy_for(pod, self.cfg)
            if policy == NONE or not gpu_pod(pod) or _d(pod.get("spec")).get("nodeName") != node:
                continue
            meta = _d(pod.get("metadata"))
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            why = protected(pod, self.cfg)
            if why:
                report.record(pod, policy, "kept", why)
                continue
            if targets is None:
                report.via[key] = NODE_WIDE
            elif policy == DEVICE:
                names = claim_names(pod)
                if names and targets:  # DRA first: a pod with claims is judged by them (when the GPU is a device)
                    holds = False
                    for n in names:
                        claim = await self._claim(meta.get("namespace", ""), n)
                        if claim is not None and claim_holds(claim, targets):
                            holds = True
                    if not holds:
                        continue  # a pod on a healthy device: not affected
                    report.via[key] = DRA_CLAIM
                elif key in named:
                    report.via[key] = POD_RESOURCES
                elif named:
                    continue  # the agent named the sick GPU's pods, and not this one: a healthy GPU's
                # (every name refused: the agent's word is no attribution, so this pod is unattributable)
                else:
                    report.unattributed.append(key)
                    report.record(pod, policy, "kept", f"{UNATTRIBUTABLE} (no DRA device, no holder named by the "
                                  "agent's PodResources)" if not targets else f"{UNATTRIBUTABLE} (no DRA claim, no "
                                  "holder named by the agent's PodResources)")
                    continue
            chosen.append(pod)
        return report, chosen

    async def _run(self, node: str, reason: str, targets: list[tuple[str, str, str]] | None,
                   holders: tuple[str, ...] = ()) -> None:
        e, m = self.e, self.e.metrics
        try:
            report, pods = await self.select(node, reason, targets, holders)
        except Exception as ex:  # noqa: BLE001 - nothing evicted: reported, the quarantine stands
            log.warning("node %s: drain: reading its pods: %s", node, ex)
            m.bump(m.actions, ("drain", "error"))
            return
        if not pods and not report.affected and not report.refused:
            return
        if e.cfg.dry_run:
            for p in pods:
                report.record(p, policy_for(p, self.cfg), "would-evict")
                m.bump(m.actions, ("evict", "dry_run"))
            log.info("dry-run: node %s: would evict %s%s", node, report.text(("would-evict",)),
                     f" ({report.attribution()})" if report.attribution() else "")
            self.reports.append(report)
            return
        deadline = e.clock() + self.cfg.deadline
        pending = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        blocked: dict[tuple[str, str], str] = {}
        how = report.attribution()
        if pods:
            await e._event({"metadata": {"name": node}}, "drain-start", f"{reason}/{len(pods)}", "VigilDrainStarted",
                           f"Vigil evicts {len(pods)} pod(s) from {node} ({reason}), PodDisruptionBudgets "
                           f"permitting: {_names(pods)}" + (f"; {how}" if how else ""), "Warning")
        while pending:
            for key, pod in list(pending.items()):
                e._check_leader()
                state, why = await self._evict(*key)
                if state == "blocked":
                    blocked[key] = why
                    continue
                pending.pop(key)
                blocked.pop(key, None)
                report.record(pod, policy_for(pod, self.cfg), state, why)
                m.bump(m.actions, ("evict", state))
            if not pending:
                break
            if e.clock() >= deadline:
                break
            await asyncio.sleep(min(self.cfg.retry, max(0.0, deadline - e.clock())))
        for key, pod in pending.items():
            report.record(pod, policy_for(pod, self.cfg), "not-evicted", blocked.get(key, "deadline"))
            m.bump(m.actions, ("evict", "deadline"))
        self.reports.append(report)
        done = [a for a in report.affected if a["state"] == "evicted"]
        left = [a for a in report.affected if a["state"] == "not-evicted"]
        log.info("node %s: drain %s: evicted %d, not evicted %d", node, "finished" if not left else
                 "stopped at its deadline", len(done), len(left))
        text = (f"Vigil's drain of {node} ({reason}): evicted {report.text(('evicted', 'gone'))}"
                + (f". Not evicted by the deadline ({self.cfg.deadline:g}s): {report.text(('not-evicted',))}"
                   if left else "")
                + (f". Kept: {report.text(('kept',), False)}" if any(
                    a['state'] == 'kept' and not a['why'].startswith(UNATTRIBUTABLE) for a in report.affected) else "")
                + (f". Kept, {UNATTRIBUTABLE} (no DRA claim, and the node's agent named no holder of the sick GPU "
                   f"from PodResources): {report.text(('kept',), True)}" if report.unattributed else "")
                + (f" ({how})" if how else ""))
        # the record first: whoever reads the end Event finds the annotation it refers to
        await self._annotate(node, report)
        await e._event({"metadata": {"name": node}}, "drain-end", f"{reason}/{len(done)}/{len(left)}",
                       "VigilDrainIncomplete" if left else "VigilDrainFinished", text,
                       "Warning" if left else "Normal")

    async def _evict(self, ns: str, name: str) -> tuple[str, str]:
        """("evicted" | "gone" | "blocked", why). 429 (a budget) and transient errors are blocked: retried."""
        from .kube import ApiError, NotFound, Transient

        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
        try:
            await self.e._io(lambda: self.e.kube._req(  # type: ignore[union-attr]
                "POST", "/api/v1/namespaces/{namespace}/pods/{name}/eviction", {"namespace": ns, "name": name},
                body))
            return "evicted", ""
        except NotFound:
            return "gone", "already deleted"
        except Transient as ex:
            return "blocked", ("its PodDisruptionBudget allows no disruption now" if str(ex).startswith("429")
                               else str(ex)[:200])
        except ApiError as ex:
            return "blocked", str(ex)[:200]

    async def _annotate(self, node: str, report: Report) -> None:
        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            meta = n.setdefault("metadata", {})
            ann = dict(meta.get("annotations") or {})
            if ann.get(ANNOTATION) == report.annotation():
                return None
            ann[ANNOTATION] = report.annotation()
            meta["annotations"] = ann
            return n
        try:
            await self.e._io(lambda: self.e.kube.update_node(node, change))  # type: ignore[union-attr]
        except Exception as ex:  # noqa: BLE001 - audit detail
            log.warning("node %s: drain record: %s", node, ex)


def _names(pods: list[dict[str, Any]]) -> str:
    rows = [f"{(p.get('metadata') or {}).get('namespace')}/{(p.get('metadata') or {}).get('name')} "
            f"({owner_text(p)})" for p in pods[:MAX_NAMED]]
    return "; ".join(rows) + (f"; and {len(pods) - MAX_NAMED} more" if len(pods) > MAX_NAMED else "")


__all__ = ["ALL", "DEVICE", "Drain", "DrainConfig", "NONE", "Report", "claim_holds", "claim_names", "policy_for",
           "protected"]
