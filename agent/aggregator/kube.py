"""Thin Kubernetes writes through the official `kubernetes` client (DESIGN §7). No decisions here.

Objects travel as plain JSON dicts (`_preload_content=False` on reads, dict bodies on writes), so a
read-modify-write never drops a field that the client's models do not know.
- spec.taints has no merge key: taints, cordon and Vigil's record are written by read-modify-write of the whole
  Node with its resourceVersion (the server answers 409 on a stale one), retried after a fresh read
  (`read_modify_write`, the one such loop: Nodes here, the Lease's ledger in lease.py, the CLI's Lease edits).
- conditions merge by `type` through the nodes/status subresource (a strategic-merge patch).
- Events get deterministic names: a retried create answers 409 instead of making a duplicate.
- 5xx, 429 and timeouts are retried with jittered backoff (`retrying`); 409 is never retried blindly.
All methods are blocking: the aggregator calls them through its executor.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar

from agent.base.backoff import delay

log = logging.getLogger(__name__)

T = TypeVar("T")
STRATEGIC = "application/strategic-merge-patch+json"


class Conflict(Exception):
    """409: the object changed since it was read (or, for a create, it exists)."""


class NotFound(Exception):
    pass


class Gone(Exception):
    """410: a watch's resourceVersion is older than the server keeps (compacted): list again."""


class Transient(Exception):
    """5xx, 429 or a timeout that outlived the retries."""


class KubeconfigError(Exception):
    """The kubeconfig cannot be read or used; the message names its path."""


def now_iso(wall: float | None = None) -> str:
    t = datetime.fromtimestamp(wall if wall is not None else time.time(), timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(wall: float | None = None) -> str:
    t = datetime.fromtimestamp(wall if wall is not None else time.time(), timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def event_name(node: str, action: str, episode: str) -> str:
    """Deterministic, so a retried create is a 409, not a second Event."""
    digest = hashlib.sha256(f"{node}\0{action}\0{episode}".encode()).hexdigest()[:16]
    return f"{node[:200]}.vigil-{digest}"


def _classify(e: BaseException) -> BaseException:
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        if e.status == 409:
            return Conflict(str(e.reason))
        if e.status == 404:
            return NotFound(str(e.reason))
        if e.status == 429 or (e.status or 0) >= 500:
            return Transient(f"{e.status} {e.reason}")
        return e
    try:
        import urllib3

        if isinstance(e, (urllib3.exceptions.HTTPError, TimeoutError, ConnectionError)):
            return Transient(f"{type(e).__name__}: {e}")
    except ImportError:  # pragma: no cover
        pass
    return e


def retrying(fn: Callable[[], T], attempts: int = 5, base: float = 0.05, cap: float = 2.0,
             on_retry: Callable[[str], None] | None = None) -> T:
    """Call fn, retrying transient failures (5xx, 429, timeouts) with full-jitter backoff. Conflict and
    NotFound pass through at once: the caller decides (re-read, or give up)."""
    for i in range(attempts):
        try:
            return fn()
        except (Conflict, NotFound):
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            err = _classify(e)
            if not isinstance(err, Transient):
                if isinstance(err, (Conflict, NotFound)):
                    raise err from e
                raise
            if i == attempts - 1:
                raise err from e
            if on_retry is not None:
                on_retry(str(err).split(" ", 1)[0])
            time.sleep(delay(i + 1, base, cap, jitter="full"))
    raise AssertionError("unreachable")


Obj = dict[str, Any]


def read_modify_write(read: Callable[[], Obj | None], change: Callable[[Obj], Obj | None],
                      write: Callable[[Obj], Obj], *, attempts: int = 8,
                      on_retry: Callable[[str], None] | None = None, current: Obj | None = None,
                      what: str = "object") -> tuple[bool, Obj | None]:
    """Optimistic concurrency, the way Kubernetes' own helpers do it: `read()` the object (None: it does not
    exist), `change(obj)` returns the new object or None (nothing to do), `write(new)` replaces it with the read
    object's resourceVersion as precondition (set here, so no caller can forget it) and raises Conflict when the
    object changed since. On a Conflict, on_retry("409") and again from a fresh read, at most `attempts` reads, so
    the change is computed from what is there now and never applied twice.
    `current`: a copy the caller read earlier, tried first (one request saved) and not counted. Only a write
    proves such a copy current (the server checks its resourceVersion): when it shows nothing to do, or its
    write conflicts, the object is read afresh.
    Returns (written, the object as it is now: the written one, or the one read; None when it does not exist)."""
    for i in range(-1 if current is not None else 0, attempts):
        obj = current if i < 0 else read()
        if obj is None:
            return False, None
        new = change(obj)
        if new is None:
            if i < 0:
                continue
            return False, obj
        new.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
        try:
            return True, write(new)
        except Conflict:
            if on_retry is not None:
                on_retry("409")
    raise Conflict(f"{what}: still conflicting after {attempts} attempts")


class Kube:
    """The few calls Vigil makes. `client`: a kubernetes.client.ApiClient."""

    def __init__(self, client: Any, timeout: float = 5.0, on_retry: Callable[[str], None] | None = None,
                 limiter: Any = None) -> None:
        self.api_client = client
        self.timeout = timeout
        self.on_retry = on_retry
        self.limiter = limiter  # ratelimit.PriorityLimiter: every request (and every retry) takes a token
        self.node_seen: list[Callable[[dict[str, Any]], None]] = []  # told every Node the server answered with
        self._local = threading.local()

    @contextlib.contextmanager
    def urgency(self, cls: int) -> Iterator[None]:
        """The requests this thread makes inside are of class `cls` (ratelimit: a quarantine's go first)."""
        before = getattr(self._local, "cls", None)
        self._local.cls = cls
        try:
            yield
        finally:
            self._local.cls = before

    def _throttle(self, path: str) -> None:
        if self.limiter is not None:
            from .ratelimit import classify

            cls = getattr(self._local, "cls", None)
            self.limiter.acquire(classify(path) if cls is None else cls)

    def _seen(self, obj: dict[str, Any] | None) -> dict[str, Any] | None:
        if obj is not None:
            for hook in self.node_seen:
                hook(obj)
        return obj

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None, **kw: Any) -> "Kube":
        """--kubeconfig FILE, else in-cluster, else $KUBECONFIG or ~/.kube/config. KubeconfigError names the file."""
        import os

        from kubernetes import client as k
        from kubernetes import config

        cfg = k.Configuration()
        if kubeconfig:
            if not os.path.isfile(kubeconfig):
                raise KubeconfigError(f"--kubeconfig {kubeconfig}: no such file")
            _load_kubeconfig(config, kubeconfig, context, cfg, f"--kubeconfig {kubeconfig}")
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException as incluster:
                path = os.path.expanduser((os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0])
                if not os.path.isfile(path):
                    raise KubeconfigError(f"not running in a cluster ({incluster}), and no kubeconfig at {path}: "
                                          f"pass --kubeconfig FILE") from None
                _load_kubeconfig(config, None, context, cfg, f"kubeconfig {path}")
        cfg.retries = 0  # we retry ourselves, with backoff and classification
        # Keep a connection per thread of the engine's executor (2 x 16 workers by default); urllib3's default
        # of 4 made every burst discard and re-open connections ("Connection pool is full").
        cfg.connection_pool_maxsize = 64
        return cls(k.ApiClient(cfg), **kw)

    def _req(self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None,
             content_type: str = "application/json", query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        """One request through the official client's transport (its auth, TLS and proxy settings), with the
        body as a plain dict: no model validation that would refuse or drop a field it does not know."""
        def once() -> dict[str, Any]:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            req = self.api_client.param_serialize(method=method, resource_path=path, path_params=params or {},
                                                  query_params=query or [], header_params=headers, body=body,
                                                  auth_settings=["BearerToken"])
            self._throttle(path)
            resp = self.api_client.call_api(*req, _request_timeout=self.timeout)
            data = resp.read()
            if not 200 <= resp.status < 300:
                raise _status_error(resp.status, data)
            return json.loads(data) if data else {}
        return retrying(once, on_retry=self.on_retry)

    # -- nodes --------------------------------------------------------------------------------------------
    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return self._seen(self._req("GET", "/api/v1/nodes/{name}", {"name": name}))
        except NotFound:
            return None

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._req("GET", "/api/v1/nodes").get("items") or []

    def list_nodes_page(self, limit: int, cont: str | None = None) -> tuple[list[dict[str, Any]], str, str | None]:
        """One page of a chunked list: (items, the list's resourceVersion, the continue token or None)."""
        query = [("limit", str(limit))] + ([("continue", cont)] if cont else [])
        data = self._req("GET", "/api/v1/nodes", query=query)
        meta = data.get("metadata") or {}
        return data.get("items") or [], str(meta.get("resourceVersion") or ""), meta.get("continue") or None

    def watch_nodes(self, resource_version: str, timeout_seconds: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Watch Nodes from `resource_version` (with bookmarks): yields (type, object) until the server ends the
        watch (after timeout_seconds). Gone (410) when that version is compacted; Transient when the connection
        fails. One request: it takes one token of the limiter, not one per event."""
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(int(timeout_seconds)))]
        req = self.api_client.param_serialize(method="GET", resource_path="/api/v1/nodes", query_params=query,
                                              header_params={"Accept": "application/json"},
                                              auth_settings=["BearerToken"])
        self._throttle("/api/v1/nodes")
        try:
            resp = self.api_client.call_api(*req, _request_timeout=(self.timeout, timeout_seconds + self.timeout))
        except Exception as e:  # noqa: BLE001 - classified: a refused connection is Transient
            raise _classify(e) from e
        if not 200 <= resp.status < 300:
            raise _status_error(resp.status, resp.read())
        raw = resp.response
        buf = b""
        try:
            for chunk in raw.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line)
                        kind, obj = ev["type"], ev["object"]
                    except (ValueError, KeyError, TypeError):
                        raise Transient(f"watch: undecodable event {line[:100]!r}") from None
                    if kind == "ERROR":
                        code = (obj or {}).get("code") if isinstance(obj, dict) else None
                        if code == 410:
                            raise Gone(str((obj or {}).get("message", "")))
                        raise Transient(f"watch: error event {str(obj)[:200]}")
                    if isinstance(obj, dict):
                        yield kind, obj
        except (Gone, Transient):
            raise
        except Exception as e:  # noqa: BLE001 - a connection cut mid-watch
            raise Transient(f"watch: {type(e).__name__}: {e}") from e
        finally:
            raw.release_conn()

    def replace_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with body.metadata.resourceVersion: Conflict when the node changed since it was read."""
        return self._seen(self._req("PUT", "/api/v1/nodes/{name}", {"name": name}, body))  # type: ignore[return-value]

    def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._seen(self._req("PATCH", "/api/v1/nodes/{name}/status", {"name": name}, patch,  # type: ignore[return-value]
                                    STRATEGIC))

    def update_node(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None],
                    attempts: int = 8, current: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any] | None]:
        """Read-modify-write (`read_modify_write`): `change(node)` returns the new node or None (nothing to do);
        `current`, the Node as the caller just read it, is tried first. Returns (written, the node as it is now)."""
        return read_modify_write(lambda: self.get_node(name), change, lambda new: self.replace_node(name, new),
                                 attempts=attempts, on_retry=self.on_retry, current=current, what=f"node {name}")

    # -- events -------------------------------------------------------------------------------------------
    def create_event(self, namespace: str, body: dict[str, Any]) -> bool:
        """False when an Event of that name exists already (a retry of one that went through)."""
        try:
            self._req("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, body)
            return True
        except Conflict:
            return False

    # -- leases -------------------------------------------------------------------------------------------
    LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._req("GET", self.LEASES + "/{name}", {"namespace": namespace, "name": name})
        except NotFound:
            return None

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._req("POST", self.LEASES, {"namespace": namespace}, body)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._req("PUT", self.LEASES + "/{name}", {"namespace": namespace, "name": name}, body)

    # -- identity -----------------------------------------------------------------------------------------
    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}
        return self._req("POST", "/apis/authentication.k8s.io/v1/tokenreviews", None, body)

    def list_pods(self, node: str) -> list[dict[str, Any]]:
        """The pods bound to a node, every namespace (the blast radius of its quarantine: blast.py)."""
        return self._req("GET", "/api/v1/pods", query=[("fieldSelector", f"spec.nodeName={node}")]).get("items") or []

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._req("GET", "/api/v1/namespaces/{namespace}/pods/{name}",
                             {"namespace": namespace, "name": name})
        except NotFound:
            return None


def _load_kubeconfig(config: Any, path: str | None, context: str | None, cfg: Any, what: str) -> None:
    try:
        config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    except Exception as e:  # noqa: BLE001 - YAML, I/O and config errors alike: one line naming the file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KubeconfigError(f"{what}: not a usable kubeconfig: {detail}") from None


def _status_error(status: int, data: bytes) -> Exception:
    try:
        reason = json.loads(data).get("message", "")
    except (ValueError, AttributeError):
        reason = data[:200].decode(errors="replace") if data else ""
    if status == 409:
        return Conflict(reason)
    if status == 404:
        return NotFound(reason)
    if status == 410:
        return Gone(reason)
    if status == 429 or status >= 500:
        return Transient(f"{status} {reason}")
    return ApiError(status, reason)


class ApiError(Exception):
    """Any other refusal (400, 401, 403, 422): not retried."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status


def node_event(node: dict[str, Any], namespace: str, action: str, episode: str, reason: str, message: str,
               kind: str, instance: str, wall: float | None = None) -> dict[str, Any]:
    meta = node.get("metadata") or {}
    name = meta.get("name", "")
    ts = now_iso(wall)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name(name, action, episode), "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name, "uid": meta.get("uid", "")},
        "reason": reason, "message": message[:1024], "type": kind,
        "source": {"component": "vigil-aggregator"},
        "reportingComponent": "vigil.dev/aggregator", "reportingInstance": instance[:128],
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    }
