"""Remediation finer than a node, wired into the engine's reconcile (DESIGN §9): per-device quarantine through
DeviceTaintRules (devices.py). The engine asks `device_plan` before it quarantines an unhealthy node; when every
fatal fault of the node is one device's and each maps to a device of the node's ResourceSlices, the devices are
tainted instead of the node (through the same budget: each device is one entry), else the node is quarantined as
before and the Event says why the device scope could not be used. A node judged healthy (healthy_delay of a
clean digest, as for a node quarantine) gets its rules deleted: only Vigil's own (labels and annotation), each
with its uid as precondition. Dry-run decides and logs, and writes none.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import devices as dv
from .kube import ApiError, now_iso
from .policy import ADMIT, ALREADY, OPENED, unhold

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .policy import Verdict
    from .state import NodeState, Problem

log = logging.getLogger(__name__)


@dataclass
class DevicePlan:
    targets: list[tuple[Any, list[dv.Target]]] = field(default_factory=list)  # (problem, its devices)
    fallback: str = ""  # why the node is quarantined instead ("" when device scope applies or was not asked)

    @property
    def device(self) -> bool:
        return bool(self.targets) and not self.fallback


class Remedy:
    def __init__(self, engine: "Engine") -> None:
        self.e = engine
        self.cfg: dv.DeviceConfig = engine.cfg.devices
        self.api = dv.DeviceApi(engine.kube) if engine.kube is not None else None
        self.version: str | None = None
        self.discovered = False
        self.known: set[str] = set()  # nodes that may carry Vigil's rules (seeded at leadership, kept after)
        self.notes: dict[str, str] = {}  # node -> why its fault was not device-scoped (for the node's Event)
        self.refused: dict[str, str] = {}  # node -> why the API server refused its rule (it gets the node's)

    # -- discovery --------------------------------------------------------------------------------------------
    async def _version(self) -> str | None:
        if not self.discovered and self.api is not None:
            self.version = await self.e._io(self.api.discover)
            self.discovered = True
            log.info("DeviceTaintRule API: %s", f"{dv.GROUP}/{self.version}" if self.version else
                     "not served (resource.k8s.io v1 or v1beta2): device faults quarantine the node")
        return self.version

    async def seed(self) -> None:
        """After gaining the Lease: which nodes carry Vigil's rules (a release must find them)."""
        if not self.cfg.enabled or self.api is None:
            return
        try:
            version = await self._version()
            if version is None:
                return
            rules = await self.e._io(lambda: self.api.rules(version))  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - the next release of such a node lists its rules anyway
            log.warning("listing Vigil's DeviceTaintRules: %s", e)
            self.discovered = False
            return
        for r in rules:
            node = ((r.get("metadata") or {}).get("labels") or {}).get(dv.NODE_LABEL)
            if node:
                self.known.add(node)

    # -- planning (reads only) ------------------------------------------------------------------------------
    async def device_plan(self, name: str, fatal: list["Problem"]) -> DevicePlan:
        self.notes.pop(name, None)
        if not self.cfg.enabled or self.api is None or not fatal:
            return DevicePlan()
        node_wide = [p for p in fatal if not dv.device_scoped(p.check, p.entity, self.cfg)]
        if node_wide:
            return DevicePlan(fallback="")  # a node-wide fault: the node's, nothing to explain
        if name in self.refused:
            return self._fallback(name, self.refused[name])
        # A read that fails quarantines the node: never fail open for want of the finer tool.
        try:
            version = await self._version()
        except Exception as e:  # noqa: BLE001
            self.discovered = False
            return self._fallback(name, f"resource.k8s.io discovery failed: {str(e)[:200]}")
        if version is None:
            return self._fallback(name, "the API server serves no DeviceTaintRule (resource.k8s.io v1 or v1beta2)")
        try:
            slices = await self.e._io(lambda: self.api.slices(version, name))  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            return self._fallback(name, f"reading the node's ResourceSlices failed: {str(e)[:200]}")
        out = DevicePlan()
        for p in fatal:
            targets, why = dv.match(p.entity, slices, p.bus_id)
            if not targets:
                return self._fallback(name, why)
            out.targets.append((p, targets))
        return out

    def _fallback(self, name: str, why: str) -> DevicePlan:
        self.notes[name] = f" (not as a device: {why})"
        return DevicePlan(fallback=why)

    # -- writes -----------------------------------------------------------------------------------------------
    async def quarantine(self, name: str, obj: dict[str, Any], node: "NodeState", verdict: "Verdict",
                         plan: DevicePlan, done: list[str]) -> None:
        e, m = self.e, self.e.metrics
        version = self.version
        assert version is not None and self.api is not None
        wall = e.wall()
        if e.cfg.dry_run:
            for p, targets in plan.targets:
                log.info("dry-run: node %s: would taint device(s) %s with %s:%s for %s on %s", name,
                         ", ".join(t.key for t in targets), dv.TAINT_KEY, self.cfg.effect, p.check, p.entity)
                m.bump(m.actions, ("device_quarantine", "dry_run"))
            done.append("would-device-quarantine")
            e._spawn(self._would(name, plan))
            return
        made: list[tuple[str, dv.Target, Any]] = []
        existing = {r["metadata"]["name"] for r in await e._io(lambda: self.api.rules(version, name))}
        self.known.add(name)
        total = e._total_nodes or len(e.nodes)
        for p, targets in plan.targets:
            for t in targets:
                rule = dv.rule_name(name, t)
                if rule in existing:
                    continue
                key = f"{name}/{t.key}"
                decision = await e.leader.update_ledger(
                    lambda ledger, key=key: _admit(ledger, key, wall, e.cfg.budget, total))
                if decision not in (ADMIT, ALREADY):
                    m.bump(m.actions, ("device_quarantine", "refused_budget"))
                    done.append("held:budget")
                    if decision == OPENED:
                        m.breaker_open = True
                        log.warning("cordon budget exhausted: breaker open; device %s of node %s is not tainted",
                                    t.key, name)
                        await e._breaker_event(obj, name)
                    continue
                e._check_leader()
                body = dv.rule_body(name, t, p.check, p.entity, p.message, self.cfg.effect, version, now_iso(wall),
                                    node.trigger or f"{name}/{node.boot_id}")
                try:
                    created = await e._io(lambda body=body: self.api.create_rule(version, body))  # type: ignore
                except ApiError as ex:  # 403, 422: it will not get better by retrying; the node's quarantine will do
                    self.refused[name] = f"the API server refused DeviceTaintRule {rule}: {str(ex)[:200]}"
                    log.warning("node %s: %s; quarantining the node instead", name, self.refused[name])
                    raise
                existing.add(rule)
                m.bump(m.actions, ("device_quarantine", "ok" if created else "exists"))
                done.append(f"device:{t.device}")
                log.info("node %s: tainted device %s (DeviceTaintRule %s, %s:%s), check %s on %s: %s", name, t.key,
                         rule, dv.TAINT_KEY, self.cfg.effect, p.check, p.entity, p.message[:200])
                made.append((rule, t, p))
        if made:  # the pods holding each device are read after the writes, in the background (blast.py)
            e._spawn(self._radius(obj, name, node.trigger, made, now_iso(wall)))

    async def _radius(self, obj: dict[str, Any], name: str, trigger: str, made: list[tuple[str, dv.Target, Any]],
                      since: str) -> None:
        """The node annotation (scope device), then one Event per tainted device naming the pods that hold it."""
        from .blast import annotation_value, merged

        e = self.e
        targets = [(t.driver, t.pool, t.device) for _, t, _ in made]
        radii = await e.blast.devices(name, targets, {(t.driver, t.pool, t.device): p.holders for _, t, p in made})
        every = merged([radii[x] for x in targets])
        await e.blast.annotate(name, annotation_value("device", ", ".join(sorted({p.check for _, _, p in made})),
                                                      since, [t.key for _, t, _ in made], every))
        for (rule, t, p), key in zip(made, targets):
            pods = radii[key].text()
            text = (f"Vigil tainted device {t.device} (driver {t.driver}, pool {t.pool}) of {name} "
                    f"{dv.TAINT_KEY}:{self.cfg.effect} with DeviceTaintRule {rule}: {p.check} on "
                    f"{p.entity}: {p.message}. The node's other devices stay allocatable")
            await e._event(obj, "device-quarantine", f"{rule}/{trigger}", "VigilDeviceTainted",
                           f"{text[:1020 - len(pods)]}. {pods}", "Warning")

    async def _would(self, name: str, plan: DevicePlan) -> None:
        targets = [(t.driver, t.pool, t.device) for _, ts in plan.targets for t in ts]
        radii = await self.e.blast.devices(name, targets, {(t.driver, t.pool, t.device): p.holders
                                                           for p, ts in plan.targets for t in ts})
        for key in targets:
            log.info("dry-run: node %s: tainting device %s would affect: %s", name, "/".join(key), radii[key].text())

    async def release(self, name: str, obj: dict[str, Any] | None, done: list[str]) -> None:
        """The node is healthy: delete Vigil's rules for it (only Vigil's; a rule a person made stays)."""
        if not self.cfg.enabled or self.api is None or name not in self.known:
            return
        version = await self._version()
        if version is None:
            return
        rules = await self.e._io(lambda: self.api.rules(version, name))  # type: ignore[union-attr]
        m = self.e.metrics
        if self.e.cfg.dry_run:
            if rules:
                log.info("dry-run: node %s is healthy; would delete DeviceTaintRule(s) %s", name,
                         ", ".join(r["metadata"]["name"] for r in rules))
                done.append("would-device-release")
            return
        for r in rules:
            self.e._check_leader()
            deleted = await self.e._io(lambda r=r: self.api.delete_rule(version, r))  # type: ignore[union-attr]
            if not deleted:
                continue
            sel = (r.get("spec") or {}).get("deviceSelector") or {}
            key = f"{name}/{sel.get('driver')}/{sel.get('pool')}/{sel.get('device')}"
            if key in self.e.leader.ledger().held:
                await self.e.leader.update_ledger(lambda ledger, key=key: (None, unhold(ledger, key)))
            m.bump(m.actions, ("device_release", "ok"))
            done.append(f"device-release:{sel.get('device')}")
            log.info("node %s: released device %s (deleted DeviceTaintRule %s)", name, sel.get("device"),
                     r["metadata"]["name"])
            await self.e._event(obj or {"metadata": {"name": name}}, "device-release",
                                f"{r['metadata']['name']}/{r['metadata'].get('uid', '')}", "VigilDeviceUntainted",
                                f"Vigil removed its DeviceTaintRule {r['metadata']['name']} from device "
                                f"{sel.get('device')} of {name}: the node reports every fatal check ok", "Normal")
        if rules:  # the blast-radius record of the device quarantine goes with its rules (only Vigil's)
            await self.e.blast.unannotate(name)
        self.known.discard(name)
        self.refused.pop(name, None)


def _admit(ledger: Any, key: str, wall: float, budget: Any, total: int) -> tuple[str, Any]:
    from .policy import admit

    decision, new = admit(ledger, key, wall, budget, total)
    return decision, (None if new == ledger else new)




SIGNATURE_RECORD = "vigil.dev/v1.signatures"  # on the Lease, beside the ledger: what a new leader takes over


class Signatures:
    """Job signatures wired to the engine (signatures.py decides): the first event of each application-class
    episode reads the GPU pods of its node (one list per node and half-window, off the stream path), then the
    correlator is asked; a new signature is reported once (an Event on the owner, a metric) and its nodes are
    judged again (their application-class faults are left out)."""

    def __init__(self, engine: "Engine") -> None:
        from .signatures import Correlator

        self.e = engine
        self.c = Correlator(engine.cfg.signatures)
        self._reading: set[str] = set()
        self.reported: list[Any] = []  # signatures reported, for tests and the demo
        self._kept: str | None = None  # the record last written to the Lease (SIGNATURE_RECORD)
        self._keeping: asyncio.Task | None = None
        self.restored = 0  # signatures taken over from the previous leader, for tests and the log

    # -- across a leader change: the signatures and the faults they absolved live on the Lease -------------------
    def restore(self) -> None:
        """At takeover (on the loop, before any stream of this leadership is read): the previous leader's
        signatures, so a fault it left out of a verdict is not quarantined now because the job's pods are gone."""
        if not self.c.cfg.enabled:
            return
        text = self.e.leader.annotation(SIGNATURE_RECORD)
        self._kept = text
        if not text:  # none kept: what this replica remembers from an earlier leadership of its own is stale
            self.c.restore({"v": 1}, self.e.clock(), self.e.wall())
            return
        try:
            self.restored = self.c.restore(json.loads(text), self.e.clock(), self.e.wall())
        except ValueError as ex:  # json.JSONDecodeError is one: a record that cannot be read restores nothing
            log.warning("job signatures: the record on the Lease cannot be read (%s): starting without it",
                        str(ex)[:200])
            return
        log.info("job signatures: took over %d signature(s) and %d absolved fault(s) from the previous leader",
                 self.restored, len(self.c.absolved))
        for sig in self.c.signatures.values():
            if not sig.evented and not self.e.cfg.dry_run and self.e.kube is not None and self.e._loop is not None:
                self.e._spawn(self._report(sig, wait=False))

    def keep(self) -> None:
        """Write what changed to the Lease, in the background, one write at a time (the latest state wins)."""
        e = self.e
        if not self.c.cfg.enabled or e._loop is None or e.kube is None or e.cfg.dry_run:
            return
        if self._keeping is None or self._keeping.done():
            self._keeping = e._loop.create_task(self._keep())

    async def _keep(self) -> None:
        e = self.e
        while e.leader.is_leader():
            doc = self.c.export(e.clock(), e.wall())
            text = json.dumps(doc, sort_keys=True, separators=(",", ":")) if doc["signatures"] or doc["absolved"] \
                else None
            if text == self._kept or (text is None and self._kept is None):
                return
            try:
                await e.leader.put_annotation(SIGNATURE_RECORD, text)
            except Exception as ex:  # noqa: BLE001 - retried at the next change; the leader still knows it all
                log.warning("job signatures: keeping the record on the Lease: %s", str(ex)[:200])
                return
            self._kept = text

    def ignore(self, node: str, now: float):  # noqa: ANN201
        return lambda p: self._ignore(node, p, now)

    def _ignore(self, node: str, p: Any, now: float) -> bool:
        from .signatures import application_class

        if not self.c.cfg.enabled:
            return False
        if application_class(p.check, p.message) and (node, p.check, p.entity) not in self.c.held:
            # known from a digest (a failover, an agent restart): correlate it like a streamed one
            if self.c.fault(node, p.check, p.entity, p.message, now):
                self._lookup(node)
        return self.c.ignore(node, p.check, p.entity, p.message, now)

    def _lookup(self, node: str) -> None:
        if node not in self._reading and self.e.kube is not None and self.e._loop is not None:
            self._reading.add(node)
            task = self.e._loop.create_task(self._read(node))
            self.e._reports.add(task)
            task.add_done_callback(self.e._reports.discard)

    def observe(self, node: str, events: list[Any], now: float) -> None:
        """New events of the node's current boot (older boots never reach here)."""
        from .signatures import application_class

        m = self.e.metrics
        lookup = faulted = False
        for ev in events:
            new, _ = self.c.episode(node, ev.check, ev.entity, ev.message, now)
            m.bump(m.episodes, "new" if new else "repeat")
            if ev.status == "ok":
                if (node, ev.check, ev.entity) in self.c.absolved:
                    self.keep()  # (its write runs later: it sees the fault forgotten)
                self.c.forget(node, [(ev.check, ev.entity)])
            elif new and self.c.cfg.enabled and application_class(ev.check, ev.message):
                faulted = True
                lookup = self.c.fault(node, ev.check, ev.entity, ev.message, now) or lookup
        if lookup:
            self._lookup(node)
        elif faulted:  # its owners are known: it may join (or make) a signature now
            self.correlate()

    async def _read(self, node: str) -> None:
        try:
            pods = await self.e._io(lambda: self.e.kube._req(  # type: ignore[union-attr]
                "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3D" + _quote(node)).get("items") or [])
        except Exception as e:  # noqa: BLE001 - no owners: no signature; after the hold the fault is judged as is
            log.warning("node %s: reading its pods for job signatures: %s", node, e)
            return
        finally:
            self._reading.discard(node)
        self.c.set_owners(node, pods, self.e.clock())
        self.correlate()

    def correlate(self) -> None:
        """Ask the correlator (synchronously: the nodes of a signature are known before the next judgement), and
        report what is new in the background."""
        e, m = self.e, self.e.metrics
        for sig in self.c.correlate(e.clock()):
            m.bump(m.signatures, sig.owner.kind)
            self.reported.append(sig)
            log.warning("job signature: %s on %d nodes running %s within %gs: application class, no node is "
                        "quarantined for it", ", ".join(f"Xid {c}" for c in sorted(sig.codes)), len(sig.nodes),
                        sig.owner, self.c.cfg.window)
            for n in sig.nodes:
                e._enqueue(n)
            if e.cfg.dry_run or e.kube is None or e._loop is None:
                continue
            task = e._loop.create_task(self._report(sig))
            e._reports.add(task)
            task.add_done_callback(e._reports.discard)
        self.keep()  # no write when nothing kept changed

    async def _report(self, sig: Any, wait: bool = True) -> None:
        """One Event per signature, written when its window has passed, so that it names every node it reached
        (the blast radius), not the first K. (A new leader writes at once the Event its predecessor had not.)"""
        from .signatures import owner_event

        e, m = self.e, self.e.metrics
        if wait:
            await asyncio.sleep(self.c.cfg.window)
        if not e.leader.is_leader():
            return  # the new leader writes it (the record says it was not written)
        body = owner_event(sig, e.cfg.event_namespace, e.cfg.identity, now_iso(e.wall()), self.c.cfg.window)
        try:
            created = await e._io(lambda: e.kube.create_event(body["metadata"]["namespace"], body))  # type: ignore
            m.bump(m.actions, ("event", "ok" if created else "exists"))
            sig.evented = True
            self.keep()
        except Exception as ex:  # noqa: BLE001 - a report, never a reason to act
            m.bump(m.actions, ("event", "error"))
            log.warning("event VigilJobSignature for %s: %s", sig.owner, ex)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


__all__ = ["DevicePlan", "Remedy", "Signatures"]
