"""Nodes as a watch shows them (an informer, the way client-go's reflector keeps one): the aggregator reads a
Node from here instead of a GET per reconcile.

- Start: a chunked list (pages of `page`, so 10,000 Nodes never sit in memory as one response), then a watch from
  the list's resourceVersion with bookmarks; a watch that ends (its timeout, a cut connection) resumes from the
  last version seen; 410 Gone (compacted) lists again. Failures back off (jittered), never end the thread.
- What is kept: metadata (without managedFields), spec, and of status only Vigil's condition: what observe()
  and a read-modify-write of the Node need (a PUT of the Node ignores status; omitted managedFields are kept by
  the server), about 2 KiB a node instead of the whole object (real Nodes carry an image list of 20-100 KiB).
- Newer wins: an object replaces the kept one only when its resourceVersion is higher (compared as integers,
  which every kube-apiserver's etcd revisions are; a version that is not one is taken as newer). The engine's
  own writes are fed in at once (`seen`, from kube.Kube.node_seen), so a reconcile right after a write never reads
  the Node from before it, and the watch event of that write, not newer, changes nothing.
- A change someone else made to what Vigil judges (its condition, its taint, cordon, record, the maintenance
  annotation; the startup taint and a person's validation request, validation.py) calls `on_change(names)` on
  the engine's loop: the engine reconciles those nodes (level-triggered: a person who removes Vigil's taint from
  an unhealthy node sees it come back).
- Until the first list is done `synced` is False and the engine GETs as before; a Node absent from the cache is
  GET too (a Node created a moment ago), so the cache can make a read cheaper, never wrong for long: a stale copy
  costs one 409 on the write, then a fresh read (kube.read_modify_write).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from agent.base.backoff import delay as backoff_delay
from .kube import Gone, Kube
from .policy import CONDITION, observe
from .validation import view

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def slim(node: Obj) -> Obj:
    """What the cache keeps of a Node (see the module's docstring)."""
    meta = {k: v for k, v in (node.get("metadata") or {}).items() if k != "managedFields"}
    conds = [c for c in ((node.get("status") or {}).get("conditions") or []) if c.get("type") == CONDITION]
    out: Obj = {"apiVersion": node.get("apiVersion", "v1"), "kind": node.get("kind", "Node"), "metadata": meta,
                "spec": node.get("spec") or {}}
    if conds:
        out["status"] = {"conditions": conds}
    return out


def _rv(obj: Obj) -> int | None:
    text = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


class NodeCache:
    def __init__(self, kube: Kube, on_change: Callable[[list[str]], None] | None = None, *, page: int = 500,
                 watch_seconds: int = 300, backoff: float = 0.5) -> None:
        self.kube = kube
        self.on_change = on_change  # called from the watch thread: the engine hops onto its loop itself
        self.page, self.watch_seconds, self.backoff = page, watch_seconds, backoff
        self._nodes: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.resource_version = ""
        self.lists = 0  # full lists made (the first, then one per 410)
        self.watches = 0  # watch requests made
        self.events = 0  # watch events applied
        self.errors = 0
        kube.node_seen.append(self.seen)

    # -- reads (any thread) --------------------------------------------------------------------------------
    def get(self, name: str) -> Obj | None:
        """The Node as last seen (do not modify it), or None when not synced or not known."""
        if not self.synced.is_set():
            return None
        with self._lock:
            return self._nodes.get(name)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    # -- updates ----------------------------------------------------------------------------------------------
    def seen(self, node: Obj) -> None:
        """A Node the API server answered with (the engine's own read or write): kept if newer."""
        self._put(node, notify=False)

    def _put(self, node: Obj, notify: bool) -> str | None:
        """Keep `node` if newer; returns its name when what Vigil judges changed (and `notify` asks)."""
        name = (node.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            return None
        new = slim(node)
        with self._lock:
            old = self._nodes.get(name)
            if old is not None:
                a, b = _rv(old), _rv(new)
                if a is not None and b is not None and b <= a:
                    return None
            self._nodes[name] = new
        if notify and (old is None or observe(old) != observe(new) or view(old) != view(new)):
            return name
        return None

    def _drop(self, node: Obj) -> str | None:
        name = (node.get("metadata") or {}).get("name")
        with self._lock:
            gone = self._nodes.pop(name, None) if isinstance(name, str) else None
        return name if gone is not None else None

    # -- the list and the watch, in a thread --------------------------------------------------------------
    def start(self) -> "NodeCache":
        self._thread = threading.Thread(target=self._run, name="node-cache", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _relist(self) -> None:
        fresh: dict[str, Obj] = {}
        cont: str | None = None
        rv = ""
        while True:
            items, page_rv, cont = self.kube.list_nodes_page(self.page, cont)
            rv = rv or page_rv  # the first page's version: the snapshot a watch resumes from
            for node in items:
                name = (node.get("metadata") or {}).get("name")
                if isinstance(name, str) and name:
                    fresh[name] = slim(node)
            if not cont:
                break
        changed: list[str] = []
        with self._lock:
            for name, new in fresh.items():
                old = self._nodes.get(name)
                if old is not None and (_rv(old) or 0) > (_rv(new) or 0):
                    fresh[name] = old  # our own write landed after the page was read
                elif old is not None and observe(old) != observe(new):
                    changed.append(name)
            changed += [n for n in self._nodes if n not in fresh]
            self._nodes = fresh
        self.resource_version = rv
        self.lists += 1
        if not self.synced.is_set():
            log.info("node cache: %d Nodes listed at resourceVersion %s", len(fresh), rv)
            self.synced.set()
        if changed and self.on_change is not None:
            self.on_change(changed)

    def _watch(self) -> None:
        self.watches += 1
        changed: list[str] = []
        for kind, obj in self.kube.watch_nodes(self.resource_version, self.watch_seconds):
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                if rv:
                    self.resource_version = str(rv)
                continue
            self.events += 1
            name = self._drop(obj) if kind == "DELETED" else self._put(obj, notify=True)
            if rv:
                self.resource_version = str(rv)
            if name is not None and self.on_change is not None:
                changed.append(name)
                self.on_change(changed)
                changed = []
            if self._stop.is_set():
                return

    def _run(self) -> None:
        failures = 0
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._watch()
                failures = 0
            except Gone as e:
                log.info("node cache: watch from resourceVersion %s expired (%s): listing again",
                         self.resource_version, e)
                need_list = True
            except Exception as e:  # noqa: BLE001 - never ends the thread: backs off and resumes
                self.errors += 1
                failures += 1
                wait = backoff_delay(failures - 1, self.backoff, 30.0, jitter="full")
                log.warning("node cache: %s: %s; again in %.1fs", "list" if need_list else "watch", e, wait)
                self._stop.wait(wait)


__all__ = ["NodeCache", "slim"]
