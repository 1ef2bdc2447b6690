"""Floods and job signatures at the aggregator (DESIGN §9, issue 14): identical findings are one episode, and an
application-class Xid on many nodes of one job within a window is that job's signature, reported once and
quarantining none of its nodes, while a hardware Xid on the same nodes quarantines them within the budget.

End to end over real gRPC on loopback (30 hand-driven agent streams, each authenticated with its pod's token)
against the project's faithful fake API server (agent/fakekube: Pods with ownerReferences and nodeName, Events),
through the official kubernetes client. The Xid messages are the agent's own wording ("Xid 13: ...",
agent/sources/gpu_events/rules.py)."""
from __future__ import annotations

import json
import time

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import policy as P
from agent.aggregator import signatures as sg
from agent.aggregator.policy import BudgetConfig, PolicyConfig
from agent.aggregator.signatures import SignatureConfig
from agent.fakekube import FakeKube

from .helpers import CORE_CALLS, RawAgent, agent_pod, declared, seen_calls, stream_replica, wait_for

GPU = [{"name": "train", "image": "registry.example/train:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]


def xid(seq, code, entity="gpu0", severity=pb.SEVERITY_FATAL, status=pb.STATUS_UNHEALTHY,
        what="graphics engine exception"):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check="gpu.xid", entity=entity, status=status, severity=severity,
                    message=f"Xid {code}: {what} | NVRM: Xid (PCI:0000:18:00): {code}, pid=4242, name=python3")


def cordoned(fk, node):
    obj = fk.get("nodes", node)
    return bool(obj["spec"].get("unschedulable")) and any(t["key"] == P.TAINT_KEY for t in obj["spec"].get("taints")
                                                          or [])


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(n=30, *, budget=None, window=3.0, k=3):
        fk = FakeKube().start()
        tokens = {}
        for i in range(n):
            node = f"gpu-{i:02d}"
            tokens[node] = agent_pod(fk, node, tmp_path).read_text()
            fk.add_pod("ml", f"train-worker-{i}", node_name=node, owner=("Job", "train"), containers=GPU,
                       labels={"batch.kubernetes.io/job-name": "train"})
            # a DaemonSet's pod is on every node too: never an owner of a signature
            fk.add_pod("monitoring", f"exporter-{i}", node_name=node, owner=("DaemonSet", "exporter"),
                       containers=GPU)
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=2.0, heartbeat_timeout=30),
                           budget=budget or BudgetConfig(), signatures=SignatureConfig(enabled=True, nodes=k, window=window))
        agents = {}
        for node, token in tokens.items():
            a = RawAgent(r.port, token, timeout=60)
            a.hello(node)
            agents[node] = a
        made.append((fk, r, agents))
        return fk, r, agents
    yield make
    for fk, r, agents in made:
        for a in agents.values():
            a.close()
        r.stop()
        fk.close()


def test_xid_13_on_30_nodes_of_one_job_quarantines_none_and_makes_one_event(cluster):
    """Xid 13 made fatal by an operator's override (the agent's default reads it as info): it is still the job's
    signature. Held for the window, then left out of every node's verdict; the hardware Xid 79 that follows on the
    same 30 nodes quarantines them, within the budget (5), and opens the breaker."""
    fk, r, agents = cluster(budget=BudgetConfig(max_nodes=5), window=3.0)
    start = time.monotonic()
    for i, (node, a) in enumerate(agents.items()):
        assert a.batch([xid(1, 13), xid(2, 13), xid(3, 13)]).seq == 3  # a flood: one episode per node
    assert time.monotonic() - start < 3.0  # within the window
    wait_for(lambda: r.replica.metrics.signatures.get("Job"), 15, what="the signature")
    time.sleep(4.0)  # past the hold: a fault that were not a signature would quarantine now
    r.run(lambda: None)
    assert not any(cordoned(fk, n) for n in agents)
    wait_for(lambda: [e for e in fk.list("events", "ml") if e["reason"] == "VigilJobSignature"], 10,
             what="the Event")
    sig_events = [e for e in fk.list("events", "ml") if e["reason"] == "VigilJobSignature"]
    assert len(sig_events) == 1
    ev = sig_events[0]
    assert (ev["involvedObject"]["kind"], ev["involvedObject"]["name"]) == ("Job", "train")
    assert "Xid 13" in ev["message"] and "30 nodes" in ev["message"]
    assert not [e for e in fk.list("events", "default") if e["reason"] == "VigilCordoned"]
    m = r.replica.metrics
    assert m.signatures == {"Job": 1}
    assert m.episodes == {"new": 30, "repeat": 60}
    # now a hardware Xid on the same nodes: never suppressed; the budget holds
    for node, a in agents.items():
        a.batch([xid(4, 79, entity="gpu1", what="GPU has fallen off the bus")])
    wait_for(lambda: sum(cordoned(fk, n) for n in agents) == 5 and m.breaker_open, 20,
             what="5 quarantined, the breaker open")
    time.sleep(0.5)
    assert sum(cordoned(fk, n) for n in agents) == 5
    assert declared(sg) <= seen_calls(fk) <= CORE_CALLS | declared(sg)


def test_an_application_xid_on_fewer_than_k_nodes_is_quarantined_after_the_hold(cluster):
    fk, r, agents = cluster(n=2, window=1.5, k=3)
    node = next(iter(agents))
    agents[node].batch([xid(1, 13)])
    time.sleep(0.5)
    assert not cordoned(fk, node)  # held: the correlation comes first
    wait_for(lambda: cordoned(fk, node), 10, what="quarantined after the hold")
    assert not r.replica.metrics.signatures


def test_an_older_boots_application_xid_counts_for_nothing(cluster):
    fk, r, agents = cluster(n=3, window=2.0, k=3)
    for node, a in agents.items():
        a.batch([xid(1, 13)], boot="old-boot")
    r.run(lambda: None)
    time.sleep(0.5)
    assert r.replica.metrics.episodes == {} and not r.replica.metrics.signatures


# -- pure -------------------------------------------------------------------------------------------------------
def test_the_application_class_agrees_with_the_agents_xid_catalogue():
    from agent.sources.gpu_events import xid as catalogue

    app = {c for c, (_, _, action) in catalogue._CATALOGUE.items() if action == catalogue.A_NONE_APP}
    assert sg.APPLICATION_XIDS == app
    assert 79 not in sg.APPLICATION_XIDS and 48 not in sg.APPLICATION_XIDS  # hardware: never suppressed


def test_the_code_is_read_from_the_agents_own_wording():
    from agent.sources.gpu_events.rules import label

    assert sg.xid_code("gpu.xid", label("xid", "13") + ": graphics engine exception") == 13
    assert sg.xid_code("gpu.ras", "Xid 13: x") is None and sg.xid_code("gpu.xid", "Xid: 13") is None


def test_owners_as_pods_carry_them():
    def pod(kind, name, labels=None):
        return {"metadata": {"namespace": "ml", "labels": labels or {}, "ownerReferences": [
            {"kind": kind, "name": name, "controller": True, "apiVersion": "batch/v1", "uid": "u"}]}}
    assert sg.owner_of(pod("Job", "j")) == sg.Owner("ml", "Job", "j", "batch/v1", "u")
    assert sg.owner_of(pod("Job", "js-w-0", {"jobset.sigs.k8s.io/jobset-name": "js"})).kind == "JobSet"
    assert sg.owner_of(pod("ReplicaSet", "web-5d9c8", {"pod-template-hash": "5d9c8"})) == \
        sg.Owner("ml", "Deployment", "web", "apps/v1")
    assert sg.owner_of(pod("DaemonSet", "agent")) is None
    assert sg.owner_of({"metadata": {"namespace": "ml"}}) is None
    assert sg.owner_of({"metadata": "x"}) is None and sg.owner_of("x") is None


def test_episodes_fold_repeats_and_end_when_idle():
    c = sg.Correlator(SignatureConfig(True, window=10))
    assert c.episode("n", "gpu.xid", "gpu0", "Xid 13: a", 0)[0]
    new, ep = c.episode("n", "gpu.xid", "gpu0", "Xid 13: b (other text)", 5)
    assert not new and (ep.count, ep.first, ep.last) == (2, 0, 5)
    assert c.episode("n", "gpu.xid", "gpu0", "Xid 31: c", 6)[0]  # another code: another episode
    assert c.episode("n", "gpu.xid", "gpu0", "Xid 13: a", 100)[0]  # idle past the window: a new one


def test_signature_needs_k_nodes_of_one_owner_within_the_window():
    c = sg.Correlator(SignatureConfig(True, nodes=3, window=10))
    job = {"metadata": {"namespace": "ml", "ownerReferences": [{"kind": "Job", "name": "t", "controller": True}]},
           "spec": {"containers": GPU}, "status": {"phase": "Running"}}
    other = {"metadata": {"namespace": "ml", "ownerReferences": [{"kind": "Job", "name": "u", "controller": True}]},
             "spec": {"containers": GPU}, "status": {"phase": "Running"}}
    cpu = {"metadata": {"namespace": "ml", "ownerReferences": [{"kind": "Job", "name": "t", "controller": True}]},
           "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}}
    for i, pods in enumerate(([job], [job], [other], [cpu])):
        c.fault(f"n{i}", "gpu.xid", "gpu0", "Xid 13: x", i)
        c.set_owners(f"n{i}", pods, i)
    assert c.correlate(4) == []  # two nodes of t (a CPU-only pod holds no GPU), one of u
    c.fault("n9", "gpu.xid", "gpu0", "Xid 13: x", 20)
    c.set_owners("n9", [job], 20)
    assert c.correlate(20) == []  # n0 and n1 are outside the window now
    c.fault("n5", "gpu.xid", "gpu0", "Xid 43: x", 21)
    c.set_owners("n5", [job], 21)
    c.fault("n6", "gpu.xid", "gpu0", "Xid 13: x", 22)
    c.set_owners("n6", [job], 22)
    [sig] = c.correlate(22)
    assert sig.nodes == {"n5", "n6", "n9"} and sig.codes == {13, 43}
    assert c.correlate(23) == []  # reported once
    assert c.ignore("n5", "gpu.xid", "gpu0", "Xid 43: x", 23)
    assert not c.ignore("n5", "gpu.xid", "gpu1", "Xid 79: x", 23)  # hardware: never


def test_config_bounds():
    for bad in ({"nodes": 1}, {"nodes": 10**6}, {"window": 0}, {"window": float("nan")}):
        with pytest.raises(ValueError):
            SignatureConfig(**bad)


def test_without_job_signatures_nothing_is_held_nor_read(cluster):
    """Off (the default): no pods are read before the quarantine (only after it, for its Event's blast radius),
    a fatal application-class Xid quarantines at once, floods are still counted as episodes."""
    fk, r, agents = cluster(n=3, window=30.0)
    r.replica.engine.signatures.c.cfg = SignatureConfig(enabled=False)
    node = next(iter(agents))
    agents[node].batch([xid(1, 13), xid(2, 13)])
    wait_for(lambda: cordoned(fk, node), 10, what="quarantined without a hold")
    cordon = fk.requests("PUT", f"^/api/v1/nodes/{node}$")[0].time
    assert not [g for g in fk.requests("GET", "/api/v1/pods") if g.time <= cordon]
    assert r.replica.metrics.episodes == {"new": 1, "repeat": 1}


# -- across a leader change -----------------------------------------------------------------------------------------
def test_a_signature_survives_a_leader_change_after_the_jobs_pods_are_gone(fake, tmp_path):
    """Issue 14: the job crashed on its Xid 13 (made fatal by an operator's override), its pods are gone, and the
    leader that made the signature stops mid-way. The new leader takes the signature over from the Lease
    (vigil.dev/v1.signatures): the agents' digests still carry the sticky Xid, and no node is quarantined for it
    after the hold (re-reading the pods would find no owner, and the hold would end in three quarantines); the
    Event is not written twice. A hardware Xid on the same nodes still quarantines on the new leader.

    Two replicas on a Lease of the project's faithful fake API server (agent/fakekube), real gRPC, hand-driven
    agent streams."""
    from agent.aggregator.remedy import SIGNATURE_RECORD

    from .helpers import leader_of, replica

    nodes = [f"gpu-{i}" for i in range(3)]
    tokens = {n: agent_pod(fake, n, tmp_path).read_text() for n in nodes}
    for i, n in enumerate(nodes):
        fake.add_pod("ml", f"train-worker-{i}", node_name=n, owner=("Job", "train"), containers=GPU)
    sig_cfg = SignatureConfig(enabled=True, nodes=3, window=2.0)
    reps = [replica(fake, "agg-0", signatures=sig_cfg), replica(fake, "agg-1", signatures=sig_cfg)]
    agents = []
    try:
        wait_for(lambda: leader_of(reps), what="a leader")
        first = leader_of(reps)
        for n in nodes:
            a = RawAgent(first.port, tokens[n], timeout=60)
            a.hello(n)
            assert a.batch([xid(1, 13)]).seq == 1
            agents.append(a)
        wait_for(lambda: first.replica.metrics.signatures.get("Job"), 15, what="the signature")

        def record():
            lease = fake.get("leases", "vigil-aggregator", "vigil")
            text = (lease["metadata"].get("annotations") or {}).get(SIGNATURE_RECORD)
            return json.loads(text) if text else None
        wait_for(lambda: (record() or {}).get("absolved") and record()["signatures"][0]["evented"], 15,
                 what="the signature and its Event kept on the Lease")
        assert sorted(record()["absolved"]) == nodes
        for i in range(3):  # the job crashed: its pods are gone
            fake.delete("pods", f"train-worker-{i}", "ml")
        for a in agents:
            a.close()
        agents.clear()
        first.stop()  # a clean stop hands the Lease over at once
        second = next(r for r in reps if r is not first)
        wait_for(lambda: second.replica.leader.is_leader(), 15, what="the new leader")
        assert second.replica.engine.signatures.restored == 1
        digest = [pb.Problem(check="gpu.xid", entity="gpu0", status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL,
                             message=xid(1, 13).message)]
        for n in nodes:
            a = RawAgent(second.port, tokens[n], timeout=60)
            a.hello(n, digest=digest, digest_seq=1)
            agents.append(a)
        time.sleep(sig_cfg.window + 2.0)  # past the hold: without the record the new leader quarantines all three
        second.run(lambda: None)
        assert not any(cordoned(fake, n) for n in nodes)
        assert len([e for e in fake.list("events", "ml") if e["reason"] == "VigilJobSignature"]) == 1
        # hardware is never suppressed, restored signature or not
        agents[0].batch([xid(2, 79, entity="gpu1", what="GPU has fallen off the bus")])
        wait_for(lambda: cordoned(fake, nodes[0]), 15, what="the hardware Xid quarantines")
        # the application fault clears: its absolution goes from the record too
        agents[1].batch([xid(2, 13, status=pb.STATUS_OK)])
        wait_for(lambda: nodes[1] not in (record() or {}).get("absolved", {}), 10, what="the record shrunk")
    finally:
        for a in agents:
            a.close()
        for r in reps:
            r.stop()


def test_the_record_round_trips_and_a_bad_one_restores_nothing():
    c = sg.Correlator(SignatureConfig(True, nodes=2, window=10))
    sig = sg.Signature(sg.Owner("ml", "Job", "t", "batch/v1", "u"), since=95.0, nodes={"a", "b"}, codes={13},
                       faults=4, reported=True, evented=True)
    c.signatures[sig.owner] = sig
    c.absolved = {("a", "gpu.xid", "gpu0"), ("b", "gpu.xid", "gpu0")}
    doc = json.loads(json.dumps(c.export(now=100.0, wall=1_000_000.0)))
    assert doc["signatures"][0]["since"] == 999_995.0
    d = sg.Correlator(SignatureConfig(True, nodes=2, window=10))
    assert d.restore(doc, now=7.0, wall=1_000_010.0) == 1  # another replica's clock: 15 s ago on its own
    [got] = d.signatures.values()
    assert (got.owner, got.since, got.nodes, got.codes, got.reported, got.evented) == \
        (sig.owner, -8.0, {"a", "b"}, {13}, True, True)
    assert d.ignore("a", "gpu.xid", "gpu0", "Xid 13: x", 7.0)  # absolved at once: no new hold
    assert not d.ignore("a", "gpu.xid", "gpu1", "Xid 79: x", 7.0)
    for bad in ({"v": 2}, {"v": 1, "signatures": [{"owner": "x"}]}, [], {"v": 1, "signatures": [
            {"owner": ["a", "b", "c", "d", "e"], "since": "soon"}]}):
        with pytest.raises(ValueError):
            d.restore(bad, 0.0, 0.0)
    assert d.signatures  # a bad record changed nothing
    # bounded: the Lease's annotations share 256 KiB with the ledger
    big = sg.Correlator(SignatureConfig(True, nodes=2, window=10))
    for i in range(150):
        o = sg.Owner("ml", "Job", f"job-{i}")
        big.signatures[o] = sg.Signature(o, since=float(i), nodes={f"node-{j:04d}-{'x' * 200}" for j in range(50)})
    big.absolved = {(f"node-{j:05d}-{'y' * 200}", "gpu.xid", "gpu0") for j in range(5000)}
    doc = big.export(now=200.0, wall=1e6)
    assert len(json.dumps(doc, separators=(",", ":"))) <= sg.MAX_RECORD_BYTES
    assert doc["signatures"] and doc["signatures"][0]["owner"][2] == "job-149"  # the newest kept first
