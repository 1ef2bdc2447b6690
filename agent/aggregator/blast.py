"""The blast radius of a quarantine (issue 14): which pods it affects and who owns them, for the on-call engineer.

After Vigil cordons a node or taints a device, and only after (the read must never delay the write), the node's
pods are listed and the affected ones named in the Event and in a node annotation (`vigil.dev/v1.quarantine`):
- node scope: every GPU pod of the node that has not finished (its GPUs are all out of service);
- device scope: the pods whose DRA ResourceClaims hold a tainted device (drain.py's claim_holds), each Event
  naming the pods of its device; GPU pods without claims (device-plugin pods) are attributed by the node agent's
  PodResources (Event.holders) when it named the device's holders: a named pod counts only when the API lists it
  as a running GPU pod of that node (a name that is not is refused, and the Event says so); without names such
  pods are counted as unattributable. The Event says which attribution it used.
- node scope on a device's fault: besides every GPU pod, the pods the agent named as holding the sick GPU
  (checked the same way) are named as on it.
Owners are drain.owner_text's (Job, JobSet, PyTorchJob, Deployment...). At most MAX_NAMED pods are named in one
Event ("and K more"), MAX_RECORDED in the annotation. A pods list that fails costs the names only: the Event says
"pods unknown: <why>". The requests are of ratelimit's EVENT class (reports: they wait behind quarantines).
Dry-run: the log line says what would be affected; no annotation, no Event (dry-run grants neither).
The annotation is Vigil's (its record carries `by: vigil`): a release removes it, and only when it is ours.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from .drain import claim_holds, claim_names, owner_text
from .signatures import gpu_pod

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

log = logging.getLogger(__name__)

ANNOTATION = "vigil.dev/v1.quarantine"
MAX_NAMED = 8  # pods named in one Event (an Event's message is kept to 1,024 characters)
MAX_RECORDED = 100  # pods kept in the annotation (a Node's annotations share 256 KiB)
MAX_TEXT = 560  # characters of an Event's message the pods may take; the rest is the quarantine's own text

Device = tuple[str, str, str]  # (driver, pool, device)


def _d(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def pod_key(pod: dict[str, Any]) -> str:
    meta = _d(_d(pod).get("metadata"))
    return f"{meta.get('namespace')}/{meta.get('name')}"


def live_gpu_pod(pod: dict[str, Any]) -> bool:
    return gpu_pod(pod) and _d(_d(pod).get("status")).get("phase") not in ("Succeeded", "Failed")


@dataclass
class Radius:
    """The affected pods of one quarantine: (pod, owner) rows, or why they are unknown."""

    pods: list[tuple[str, str]] = field(default_factory=list)
    unknown: str = ""  # set: the pods could not be read
    unattributed: int = 0  # device scope: GPU pods without DRA claims (device-plugin pods), not attributable
    via: set[str] = field(default_factory=set)  # the attributions used: "DRA claim", "PodResources"
    refused: list[str] = field(default_factory=list)  # holders the agent named that are no GPU pod of the node
    on_device: list[str] = field(default_factory=list)  # node scope: the pods on the sick GPU (PodResources)

    def text(self) -> str:
        """'Pods affected: ns/a (Job x); ns/b (Deployment y); and 3 more', within MAX_TEXT characters."""
        if self.unknown:
            return f"Pods unknown: {self.unknown[:200]}"
        if not self.pods:
            out = "No pod is affected"
        else:
            shown: list[str] = []
            used = 0
            for pod, owner in self.pods[:MAX_NAMED]:
                row = f"{pod} ({owner})"
                if used + len(row) > MAX_TEXT - 120 and shown:
                    break
                shown.append(row[:250])
                used += len(shown[-1]) + 2
            more = len(self.pods) - len(shown)
            out = f"Pods affected ({len(self.pods)}): " + "; ".join(shown) + (f"; and {more} more" if more else "")
        if self.on_device:
            out += f". On the sick GPU per the node's PodResources: {', '.join(self.on_device[:MAX_NAMED])[:200]}"
        if self.via:
            out += f" (attribution: {', '.join(sorted(self.via))})"
        if self.unattributed:
            out += (f". {self.unattributed} other GPU pod(s) on the node hold GPUs without a DRA claim (device "
                    f"plugin) and the node's agent named no holder: unattributable, Vigil cannot tell whether "
                    f"they use the sick device")
        if self.refused:
            out += (f". Refused {len(self.refused)} pod name(s) the node's agent gave that are no running GPU pod "
                    f"of the node: {', '.join(self.refused[:4])[:160]}")
        return out

    def record(self) -> dict[str, Any]:
        if self.unknown:
            return {"pods": None, "podsUnknown": self.unknown[:1024]}
        return {"pods": [{"pod": p, "owner": o} for p, o in self.pods[:MAX_RECORDED]],
                "more": max(0, len(self.pods) - MAX_RECORDED), "unattributed": self.unattributed,
                **({"attribution": sorted(self.via)} if self.via else {}),
                **({"onDevice": self.on_device[:MAX_RECORDED]} if self.on_device else {}),
                **({"refused": self.refused[:MAX_RECORDED]} if self.refused else {})}


def checked(node: str, pods: Iterable[dict[str, Any]], holders: Iterable[str]) -> tuple[set[str], list[str]]:
    """(the names the agent gave that are running GPU pods the API lists on `node`, the others): the agent's word
    is a claim, never the reason to name a pod of another node."""
    live = {pod_key(p) for p in pods if live_gpu_pod(p) and _d(_d(p).get("spec")).get("nodeName") == node}
    names = sorted(set(holders))
    return {n for n in names if n in live}, [n for n in names if n not in live]


def node_radius(pods: Iterable[dict[str, Any]], node: str = "", holders: Iterable[str] = ()) -> Radius:
    pods = list(pods)
    out = Radius([(pod_key(p), owner_text(p)) for p in pods if live_gpu_pod(p)])
    if holders:
        good, out.refused = checked(node, pods, holders)
        out.on_device = sorted(good)
        if good:
            out.via.add("PodResources")
    return out


def merged(radii: list[Radius]) -> Radius:
    """One Radius for the annotation of a device quarantine: the pods of every tainted device, once each."""
    out = Radius()
    for r in radii:
        if r.unknown:
            return Radius(unknown=r.unknown)
        out.unattributed = max(out.unattributed, r.unattributed)
        out.pods += [p for p in r.pods if p not in out.pods]
        out.via |= r.via
        out.refused += [n for n in r.refused if n not in out.refused]
    return out


def annotation_value(scope: str, reason: str, since: str, devices: list[str], radius: Radius) -> str:
    doc = {"by": "vigil", "scope": scope, "reason": reason[:1024], "since": since, "devices": devices[:64],
           **radius.record()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def is_ours(value: str | None) -> bool:
    try:
        return isinstance(value, str) and json.loads(value).get("by") == "vigil"
    except (ValueError, AttributeError):
        return False


def without_annotation(node: dict[str, Any]) -> dict[str, Any] | None:
    """The Node without Vigil's quarantine annotation (None: it has none of Vigil's)."""
    meta = node.setdefault("metadata", {})
    ann = dict(meta.get("annotations") or {})
    if not is_ours(ann.get(ANNOTATION)):
        return None
    del ann[ANNOTATION]
    meta["annotations"] = ann
    return node


class Blast:
    """Reads the pods of a quarantined node (off the quarantine path) and writes the annotation; the engine and
    remedy write the Events with `Radius.text()`."""

    def __init__(self, engine: "Engine") -> None:
        self.e = engine

    async def pods(self, node: str) -> tuple[list[dict[str, Any]] | None, str]:
        from .ratelimit import EVENT

        try:
            return await self.e._io(lambda: self.e.kube.list_pods(node), EVENT), ""  # type: ignore[union-attr]
        except Exception as ex:  # noqa: BLE001 - the names are lost, never the quarantine
            log.warning("node %s: listing its pods for the Event: %s", node, ex)
            return None, str(ex)[:300] or type(ex).__name__

    async def node(self, node: str, holders: Iterable[str] = ()) -> Radius:
        pods, why = await self.pods(node)
        return Radius(unknown=why) if pods is None else node_radius(pods, node, holders)

    async def devices(self, node: str, targets: list[Device],
                      holders: dict[Device, tuple[str, ...]] | None = None) -> dict[Device, Radius]:
        """Per tainted device, the pods whose claims hold it, or (pods without claims) that the node's agent
        named as holding its GPU (`holders`, per device), checked against the listed pods."""
        pods, why = await self.pods(node)
        if pods is None:
            return {t: Radius(unknown=why) for t in targets}
        out = {t: Radius() for t in targets}
        named: dict[Device, set[str]] = {}
        for t in targets:
            named[t], out[t].refused = checked(node, pods, (holders or {}).get(t, ()))
        unattributed = {t: 0 for t in targets}
        for pod in pods:
            if not live_gpu_pod(pod):
                continue
            names = claim_names(pod)
            if not names:  # a device-plugin pod: the agent's PodResources, when it named the device's holders
                for t in targets:
                    if pod_key(pod) in named[t]:
                        out[t].pods.append((pod_key(pod), owner_text(pod)))
                        out[t].via.add("PodResources")
                    elif not named[t]:  # none named, or every name refused: unattributable, not healthy
                        unattributed[t] += 1
                continue
            ns = _d(pod.get("metadata")).get("namespace") or ""
            claims = []
            for n in names:
                try:
                    c = await self._claim(ns, n)
                except Exception as ex:  # noqa: BLE001 - this pod's attribution is unknown, the others' are not
                    log.warning("node %s: reading ResourceClaim %s/%s for the Event: %s", node, ns, n, ex)
                    for t in targets:
                        unattributed[t] += 1
                    claims = []
                    break
                if c is not None:
                    claims.append(c)
            for t in targets:
                if any(claim_holds(c, [t]) for c in claims):
                    out[t].pods.append((pod_key(pod), owner_text(pod)))
                    out[t].via.add("DRA claim")
        for t, r in out.items():
            r.unattributed = unattributed[t]
        return out

    async def _claim(self, ns: str, name: str) -> dict[str, Any] | None:
        from .kube import NotFound
        from .ratelimit import EVENT

        version = self.e.remedy.version or "v1"  # as discovered for DeviceTaintRules
        try:
            return await self.e._io(lambda: self.e.kube._req(  # type: ignore[union-attr]
                "GET", f"/apis/resource.k8s.io/{version}/namespaces/{{namespace}}/resourceclaims/{{name}}",
                {"namespace": ns, "name": name}), EVENT)
        except NotFound:
            return None

    async def annotate(self, node: str, value: str) -> None:
        from .ratelimit import EVENT

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            meta = n.setdefault("metadata", {})
            ann = dict(meta.get("annotations") or {})
            if ann.get(ANNOTATION) == value:
                return None
            ann[ANNOTATION] = value
            meta["annotations"] = ann
            return n
        cache = self.e.nodecache
        cached = cache.get(node) if cache is not None else None
        current = copy.deepcopy(cached) if cached is not None else None  # a GET saved when the watch is current
        try:
            await self.e._io(lambda: self.e.kube.update_node(node, change, current=current), EVENT)  # type: ignore
        except Exception as ex:  # noqa: BLE001 - audit detail: the quarantine stands without it
            log.warning("node %s: quarantine record %s: %s", node, ANNOTATION, ex)

    async def unannotate(self, node: str) -> None:
        try:
            await self.e._io(lambda: self.e.kube.update_node(node, without_annotation))  # type: ignore[union-attr]
        except Exception as ex:  # noqa: BLE001 - audit detail
            log.warning("node %s: removing %s: %s", node, ANNOTATION, ex)


__all__ = ["ANNOTATION", "Blast", "Radius", "annotation_value", "checked", "is_ours", "merged", "node_radius",
           "without_annotation"]
