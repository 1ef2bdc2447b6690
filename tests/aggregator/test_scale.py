"""The aggregator at fleet size (issue 15): the watch-based Node cache and the client-side rate limit.

Against agent/fakekube (no kube-apiserver can run here: see shared/REAL-PARTS.md), driven through the official
`kubernetes` client's transport: chunked lists (limit/continue), watches from a resourceVersion with bookmarks,
410 Gone after compaction, as the real server serves them. The limiter's ordering runs on a fake clock; nothing
here asserts a duration (the rates are measured in bench/fleet_bench.py)."""
from __future__ import annotations

import threading

import pytest

from agent.aggregator.kube import Kube
from agent.aggregator.nodecache import NodeCache, slim
from agent.aggregator.policy import CONDITION, TAINT_KEY
from agent.aggregator.ratelimit import EVENT, LEASE, NODE, QUARANTINE, PriorityLimiter, classify
from tests.support.clock import FakeClock

from .helpers import RawAgent, agent_pod, fatal, stream_replica, wait_for


def _cache(fk, **kw):
    seen = []
    cache = NodeCache(Kube(fk.api_client()), lambda names: seen.extend(names), **kw).start()
    wait_for(cache.synced.is_set, what="the first list")
    return cache, seen


def _cordon(node):  # a person's cordon: Vigil judges it (a release must not undo it)
    node["spec"]["unschedulable"] = True


def test_the_cache_lists_in_pages_then_follows_a_watch(fake):
    for i in range(7):
        fake.add_node(f"n{i}")
    cache, changed = _cache(fake, page=3)
    try:
        assert sorted(o["metadata"]["name"] for o in cache.items()) == [f"n{i}" for i in range(7)]
        pages = [r for r in fake.requests("GET", r"^/api/v1/nodes$") if not r.query.get("watch")]
        assert len(pages) == 3 and all(r.query.get("limit") == "3" for r in pages)  # 3 + 3 + 1, never one list
        # another writer's change to what Vigil judges (a cordon) arrives by the watch and is reported
        fake.mutate("nodes", "n2", _cordon)
        wait_for(lambda: "n2" in changed, what="the watch event")
        assert cache.get("n2")["spec"]["unschedulable"] is True
        # a change Vigil does not judge (a label, another's taint) is kept but not reported
        fake.mutate("nodes", "n4", lambda n: n["spec"].update(taints=[{"key": "x.com/y", "effect": "NoSchedule"}]))
        fake.mutate("nodes", "n3", lambda n: n["metadata"]["labels"].update(zone="b"))
        wait_for(lambda: cache.get("n3")["metadata"]["labels"].get("zone") == "b", what="the label")
        assert "n3" not in changed and "n4" not in changed
        fake.add_node("n9")
        wait_for(lambda: cache.get("n9") is not None, what="the new node")
        fake.delete("nodes", "n0")
        wait_for(lambda: cache.get("n0") is None, what="the deleted node")
        assert len(cache) == 7
    finally:
        cache.stop()


def test_after_an_outage_and_a_compaction_the_cache_lists_again(fake):
    """The watch resumes from the last version it saw; when the server has compacted past it (410 Gone, sent as
    an ERROR event in the watch, as kube-apiserver does) it lists again, and sees what changed meanwhile."""
    fake.add_node("a")
    fake.add_node("b")
    cache, changed = _cache(fake, watch_seconds=1, backoff=0.05)
    try:
        fake.stop()  # the API server goes away: the watch is cut
        fake.mutate("nodes", "a", _cordon)
        fake.delete("nodes", "b")
        fake.compact()
        fake.start()
        wait_for(lambda: cache.lists >= 2, timeout=30, what="a second list")
        assert cache.get("b") is None
        assert cache.get("a")["spec"]["unschedulable"] is True
        assert "a" in changed and "b" in changed
        assert cache._thread.is_alive()  # failed reconnects (if any fell in the outage) never end the thread
    finally:
        cache.stop()


def test_a_bookmark_moves_the_resume_point_without_an_event(fake):
    fake.add_node("a")
    cache, _ = _cache(fake)
    try:
        start = cache.resource_version
        fake.create("configmaps", {"metadata": {"name": "c"}}, namespace="vigil")  # moves the cluster's version
        wait_for(lambda: int(cache.resource_version) > int(start), what="a bookmark")
        assert cache.events == 0
    finally:
        cache.stop()


def test_an_older_copy_never_replaces_a_newer_one(fake):
    """The engine's own writes are fed in as they answer; a watch event from before them must not undo that."""
    node = fake.add_node("a")
    cache, _ = _cache(fake)
    try:
        newer = dict(node, metadata=dict(node["metadata"], resourceVersion="999999"))
        cache.seen(newer)
        cache.seen(node)
        assert cache.get("a")["metadata"]["resourceVersion"] == "999999"
    finally:
        cache.stop()


def test_the_cache_keeps_what_a_write_needs_and_not_the_rest():
    node = {"metadata": {"name": "a", "resourceVersion": "5", "managedFields": [{"manager": "kubelet"}],
                         "labels": {"x": "y"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"images": [{"names": ["big"] * 100}],
                       "conditions": [{"type": "Ready", "status": "True"}, {"type": CONDITION, "status": "False"}]}}
    out = slim(node)
    assert out["metadata"] == {"name": "a", "resourceVersion": "5", "labels": {"x": "y"}}
    assert out["spec"] == node["spec"]
    assert out["status"] == {"conditions": [{"type": CONDITION, "status": "False"}]}


def test_a_quarantine_reads_the_node_from_the_cache_and_a_removed_taint_comes_back(fake, tmp_path):
    """End to end over gRPC: the replica's reconcile reads the Node from its watch (no GET of the Node before the
    cordon), and a person who removes Vigil's taint from a node that is still unhealthy sees it put back."""
    token = agent_pod(fake, "gpu-1", tmp_path).read_text()
    r = stream_replica(fake)
    a = None
    try:
        cache = r.replica.node_cache
        wait_for(cache.synced.is_set, what="the cache")
        fake.clear_requests()
        a = RawAgent(r.port, token)
        a.hello("gpu-1", digest=[fatal()])

        def tainted():
            return any(t["key"] == TAINT_KEY for t in (fake.get("nodes", "gpu-1")["spec"].get("taints") or []))
        wait_for(tainted, what="the quarantine")
        # (after the cordon, the blast-radius annotation may read the Node again: audit detail, off that path)
        cordon = fake.requests("PUT", r"^/api/v1/nodes/gpu-1$")[0].time
        assert [g for g in fake.requests("GET", r"^/api/v1/nodes/gpu-1$") if g.time <= cordon] == []
        assert fake.get("nodes", "gpu-1")["spec"]["unschedulable"] is True

        def untaint(n):
            n["spec"]["taints"] = [t for t in n["spec"].get("taints") or [] if t["key"] != TAINT_KEY]
        fake.mutate("nodes", "gpu-1", untaint)
        wait_for(tainted, what="the taint put back")
        limiter = r.replica.metrics.limiter
        assert limiter.requests[QUARANTINE] >= 2  # both cordon writes went as quarantines through the limit
        assert b'vigil_aggregator_kube_requests_total{class="quarantine"}' in r.replica.metrics.render()
        assert b"vigil_aggregator_node_cache_synced 1.0" in r.replica.metrics.render()
    finally:
        if a is not None:
            a.close()
        r.stop()


def test_without_the_cache_a_reconcile_reads_the_node(fake, tmp_path):
    from agent.aggregator.app import Replica, ReplicaOptions, ReplicaThread
    from agent.aggregator.engine import AggregatorConfig

    token = agent_pod(fake, "gpu-1", tmp_path).read_text()
    r = ReplicaThread(Replica(AggregatorConfig(identity="agg", heartbeat_seconds=1, tick_seconds=0.1),
                              ReplicaOptions(listen="127.0.0.1:0", use_lease=False, node_cache=False),
                              Kube(fake.api_client())))
    a = None
    try:
        assert r.replica.node_cache is None
        a = RawAgent(r.port, token)
        a.hello("gpu-1", digest=[fatal()])
        wait_for(lambda: fake.get("nodes", "gpu-1")["spec"].get("unschedulable"), what="the cordon")
        assert fake.requests("GET", r"^/api/v1/nodes/gpu-1$")
    finally:
        if a is not None:
            a.close()
        r.stop()


# -- the client-side rate limit ------------------------------------------------------------------------------
def test_requests_are_classed_by_what_they_touch():
    assert classify("/apis/coordination.k8s.io/v1/namespaces/vigil/leases/x") == LEASE
    assert classify("/api/v1/namespaces/default/events") == EVENT
    assert classify("/api/v1/nodes/a/status") == NODE


def test_when_requests_queue_a_quarantine_goes_before_an_event():
    clock = FakeClock(0.0)
    lim = PriorityLimiter(qps=20, burst=1, clock=clock)
    lim.acquire(EVENT)  # the one token of the burst
    order = []

    def take(cls, name):
        lim.acquire(cls)
        order.append(name)
    threads = [threading.Thread(target=take, args=(EVENT, "event-1"), daemon=True)]
    threads[0].start()
    wait_for(lambda: lim.queued == 1, what="the first waiter")
    for cls, name in ((EVENT, "event-2"), (QUARANTINE, "quarantine")):
        t = threading.Thread(target=take, args=(cls, name), daemon=True)
        t.start()
        threads.append(t)
        wait_for(lambda n=len(threads): lim.queued == n, what="the waiters")
    for k in range(1, 4):  # one token at a time: each goes to the most urgent, then the oldest, waiter
        clock.step(1 / 20)
        wait_for(lambda: len(order) == k, what=f"request {k}")
    assert order == ["quarantine", "event-1", "event-2"]
    assert lim.requests[QUARANTINE] == 1 and lim.requests[EVENT] == 3


def test_the_limiter_refuses_a_rate_that_lets_nothing_through():
    with pytest.raises(ValueError):
        PriorityLimiter(qps=0, burst=1)
    with pytest.raises(ValueError):
        PriorityLimiter(qps=5, burst=0)
