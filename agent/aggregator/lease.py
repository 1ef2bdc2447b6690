"""Active/standby on a coordination.k8s.io/v1 Lease (DESIGN §1, §7), the way client-go's leader election does it.

- Acquire: create the Lease, or take it over once the holder's record has not changed for leaseDurationSeconds
  of *our own* monotonic clock (no clock-skew assumption); an update with the observed resourceVersion, so of two
  replicas racing only one wins (the other gets 409).
- Hold: renew every retry_period; a holder that could not renew for renew_deadline (< lease duration) steps
  down before anyone else may take over, so two replicas never act at once.
- The cordon budget's ledger lives on the Lease (annotation policy.LEDGER) and is changed only by the holder,
  through `update_ledger`: read-modify-write with the resourceVersion, retried on 409 (kube.read_modify_write).
The Kubernetes calls are blocking (kube.Kube); they run in the aggregator's executor.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

from .kube import Conflict, Kube, micro_time, read_modify_write
from .policy import LEDGER, Ledger

log = logging.getLogger(__name__)
T = TypeVar("T")


class NotLeader(Exception):
    pass


class _LeaseLost(Exception):
    """The Lease is gone or held by another (found in the executor; stepping down happens on the loop)."""


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0,
                 run: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not retry_period < renew_deadline < duration:
            raise ValueError("need retry_period < renew_deadline < duration")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.duration, self.renew_deadline, self.retry_period = duration, renew_deadline, retry_period
        self._run = run or (lambda fn: asyncio.to_thread(fn))
        self.clock = clock
        self._lease: dict[str, Any] | None = None  # the last version seen
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # when we last renewed as holder
        self._lock = asyncio.Lock()
        self.leader = False
        self.transitions = 0
        self.on_started: list[Callable[[], Any]] = []
        self.on_stopped: list[Callable[[], Any]] = []

    def is_leader(self) -> bool:
        """Holder, and renewed within renew_deadline: safe to act."""
        return self.leader and self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step()
            except Exception as e:  # noqa: BLE001 - a failed round is retried; it never kills the loop
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            if self.leader and not self.is_leader():
                self._lose("renew deadline passed")
            try:
                await asyncio.wait_for(stop.wait(), self.retry_period)
            except asyncio.TimeoutError:
                pass
        if self.leader:
            await self.release()

    async def step(self) -> None:
        async with self._lock:
            lease = await self._run(lambda: self.kube.get_lease(self.namespace, self.name))
            now = self.clock()
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": self._spec(None, acquire=True)}
                try:
                    self._lease = await self._run(lambda: self.kube.create_lease(self.namespace, body))
                except Conflict:  # not a stale read to retry: another replica created it first; it holds the Lease
                    return
                self._renewed(now)
                return
            self._lease = lease
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime") or "")
            if record != self._observed:
                self._observed, self._observed_at = record, now
            if holder == self.identity:
                new = dict(lease, spec=self._spec(spec, acquire=not self.leader))
            else:
                if self.leader:
                    self._lose(f"the Lease is held by {holder}")
                duration = float(spec.get("leaseDurationSeconds") or self.duration)
                if holder and now - self._observed_at < duration:
                    return
                new = dict(lease, spec=self._spec(spec, acquire=True))
            try:
                self._lease = await self._run(lambda: self.kube.replace_lease(self.namespace, self.name, new))
            except Conflict:  # not retried: another replica won the race (or renewed); the next round re-reads
                return
            self._renewed(now)

    def _spec(self, spec: dict[str, Any] | None, acquire: bool) -> dict[str, Any]:
        spec = dict(spec or {})
        now = micro_time()
        if acquire:
            if spec.get("holderIdentity") not in (None, "", self.identity):
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = now
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.duration), renewTime=now)
        return spec

    def _renewed(self, now: float) -> None:
        self._renewed_at = now
        if not self.leader:
            self.leader = True
            self.transitions += 1
            log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
            for cb in self.on_started:
                cb()

    def _lose(self, why: str) -> None:
        log.warning("lease %s/%s: %s steps down: %s", self.namespace, self.name, self.identity, why)
        self.leader = False
        self._renewed_at = None
        for cb in self.on_stopped:
            cb()

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so the standby takes over at once."""
        async with self._lock:
            lease = self._lease
            if lease is None or not self.leader:
                return
            self._lose("shutting down")
            spec = dict(lease.get("spec") or {}, holderIdentity="", leaseDurationSeconds=1)
            try:
                await self._run(lambda: self.kube.replace_lease(self.namespace, self.name, dict(lease, spec=spec)))
            except Exception as e:  # noqa: BLE001
                log.info("lease release: %s", e)

    # -- the cordon budget ledger -------------------------------------------------------------------------
    def ledger(self) -> Ledger:
        lease = self._lease or {}
        return Ledger.from_json(((lease.get("metadata") or {}).get("annotations") or {}).get(LEDGER))

    async def update_ledger(self, change: Callable[[Ledger], tuple[T, Ledger | None]], attempts: int = 8) -> T:
        """Read-modify-write the ledger as the holder: `change(ledger)` returns (result, new ledger or None).
        The first attempt uses the Lease as last seen (the holder is the ledger's only writer); every attempt
        checks leadership first. The loop runs in the executor, so `change` must be pure (it is: policy.admit,
        policy.unhold)."""
        out: list[T] = []

        def modify(lease: dict[str, Any]) -> dict[str, Any] | None:
            ann = (lease.get("metadata") or {}).get("annotations") or {}
            result, new = change(Ledger.from_json(ann.get(LEDGER)))
            out[:] = [result]
            if new is None:
                return None
            meta = dict(lease.get("metadata") or {})
            meta["annotations"] = dict(ann, **{LEDGER: new.to_json()})
            return dict(lease, metadata=meta)

        async with self._lock:
            self._lease = await self._as_holder(modify, attempts, "ledger")
            return out[0]

    async def _as_holder(self, modify: Callable[[dict[str, Any]], dict[str, Any] | None], attempts: int,
                         what: str) -> dict[str, Any] | None:
        """One read-modify-write of the Lease as its holder (the caller holds self._lock): the Lease as last seen
        first, then a GET; leadership checked at every attempt; a Lease gone or held by another is NotLeader."""
        ns, name = self.namespace, self.name
        seen = [self._lease]

        def read() -> dict[str, Any]:
            if not self.is_leader():
                raise NotLeader(self.identity)
            lease = seen.pop() if seen else None
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                lease = self.kube.get_lease(ns, name)
                if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                    raise _LeaseLost()
            return lease

        try:
            _, lease = await self._run(lambda: read_modify_write(
                read, modify, lambda body: self.kube.replace_lease(ns, name, body), attempts=attempts, what=what))
        except _LeaseLost:
            self._lose("the Lease is gone or held by another")
            raise NotLeader(self.identity) from None
        return lease

    # -- other state the holder keeps on the Lease (job signatures: remedy.Signatures) ------------------------------
    def annotation(self, key: str) -> str | None:
        """An annotation of the Lease as last seen (at takeover: as it was when this replica won it)."""
        return (((self._lease or {}).get("metadata") or {}).get("annotations") or {}).get(key)

    async def put_annotation(self, key: str, value: str | None, attempts: int = 8) -> None:
        """Set (None: remove) one annotation of the Lease as the holder, like update_ledger: read-modify-write with
        the resourceVersion, the Lease as last seen first, leadership checked at every attempt."""
        def modify(lease: dict[str, Any]) -> dict[str, Any] | None:
            ann = dict((lease.get("metadata") or {}).get("annotations") or {})
            if ann.get(key) == value:
                return None
            if value is None:
                ann.pop(key, None)
            else:
                ann[key] = value
            return dict(lease, metadata=dict(lease.get("metadata") or {}, annotations=ann))

        async with self._lock:
            lease = await self._as_holder(modify, attempts, f"lease annotation {key}")
            if lease is not None:
                self._lease = lease


class StaticLeader:
    """For a single replica without a Lease (tests, the benchmark, `--no-lease`): always the leader; the ledger
    lives in memory."""

    def __init__(self, identity: str = "static", clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self.leader = True
        self.on_started: list[Callable[[], Any]] = []
        self.on_stopped: list[Callable[[], Any]] = []
        self._ledger = Ledger()
        self._annotations: dict[str, str] = {}  # in memory: no Lease to keep them on
        self.clock = clock

    def is_leader(self) -> bool:
        return True

    async def run(self, stop: asyncio.Event) -> None:
        for cb in self.on_started:
            cb()
        await stop.wait()

    def ledger(self) -> Ledger:
        return self._ledger

    def annotation(self, key: str) -> str | None:
        return self._annotations.get(key)

    async def put_annotation(self, key: str, value: str | None) -> None:
        if value is None:
            self._annotations.pop(key, None)
        else:
            self._annotations[key] = value

    async def update_ledger(self, change: Callable[[Ledger], tuple[T, Ledger | None]]) -> T:
        result, new = change(self._ledger)
        if new is not None:
            self._ledger = new
        return result
