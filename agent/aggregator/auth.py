"""Who is this agent? (DESIGN §6 Identity)

The agent sends its projected ServiceAccount token (audience "vigil") as gRPC metadata
`authorization: Bearer <token>`. The aggregator asks the API server (TokenReview) and requires:
  - authenticated, with the audience among status.audiences;
  - the username of the agent's own ServiceAccount (system:serviceaccount:<ns>:<name>);
  - a node: the `authentication.kubernetes.io/node-name` extra (Kubernetes 1.30+), else the pod named by the
    `pod-name` extra, in the ServiceAccount's namespace, whose uid matches `pod-uid`: its spec.nodeName.
Verdicts are cached by a hash of the token for a short time (the token never lands in memory twice).
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .kube import Kube

NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"


class AuthError(Exception):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason  # a bounded label: missing_token, invalid_token, wrong_user, wrong_audience, no_node


@dataclass(frozen=True)
class Identity:
    username: str
    node: str | None  # None only from AllowAll: the hello's node is taken on trust


def bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip() or None
    return None


class TokenReviewer:
    def __init__(self, kube: Kube, usernames: set[str], audience: str = "vigil", cache_seconds: float = 60.0,
                 run: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.usernames = usernames
        self.audience = audience
        self.cache_seconds = cache_seconds
        self._run = run or (lambda fn: asyncio.to_thread(fn))
        self.clock = clock
        self._cache: dict[str, tuple[float, Identity]] = {}
        self.reviews = 0

    async def authenticate(self, metadata: Any) -> Identity:
        token = bearer(metadata)
        if token is None:
            raise AuthError("missing_token", "no bearer token in the metadata")
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        now = self.clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        ident = await self._run(lambda: self._review(token))
        if len(self._cache) > 10000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.cache_seconds, ident)
        return ident

    def _review(self, token: str) -> Identity:
        self.reviews += 1
        review = self.kube.token_review(token, [self.audience])
        status = review.get("status") or {}
        if not status.get("authenticated"):
            raise AuthError("invalid_token", status.get("error") or "the token did not authenticate")
        if self.audience not in (status.get("audiences") or []):
            raise AuthError("wrong_audience", f"the token is not for audience {self.audience!r}")
        user = status.get("user") or {}
        username = user.get("username", "")
        if username not in self.usernames:
            raise AuthError("wrong_user", f"{username!r} is not the Vigil agent's ServiceAccount")
        extra = user.get("extra") or {}
        node = _one(extra.get(NODE_NAME))
        if node:
            return Identity(username, node)
        pod_name, pod_uid = _one(extra.get(POD_NAME)), _one(extra.get(POD_UID))
        if not pod_name:
            raise AuthError("no_node", "the token is not bound to a pod: cannot tell its node")
        namespace = username.split(":")[2]
        pod = self.kube.get_pod(namespace, pod_name)
        if pod is None or (pod_uid and (pod.get("metadata") or {}).get("uid") != pod_uid):
            raise AuthError("no_node", f"pod {namespace}/{pod_name} of the token is gone")
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            raise AuthError("no_node", f"pod {namespace}/{pod_name} is not scheduled")
        return Identity(username, node)


def _one(value: Any) -> str | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value or None


class AllowAll:
    """No authentication (`--insecure-no-auth`: local demos and the benchmark only): the hello's node is trusted."""

    async def authenticate(self, metadata: Any) -> Identity:
        return Identity("anonymous", None)
