"""End to end over real gRPC on loopback: agents (real processes replaying fixture nodes, or the real stream
client spooling events), two aggregator replicas electing a leader on a Lease, the project's fake API server
(agent/fakekube: no real kube-apiserver can be installed here) driven through the official client."""
import json
import sqlite3

import grpc
import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent._proto.vigil.v1 import health_pb2_grpc as pbg
from agent.aggregator import policy as P

from .helpers import agent_pod, kill, leader_of, replica, start_agent, start_emitter, stop, stop_replicas, wait_for

NODES = {"node-a": "mi300x-rocm71-healthy", "node-b": "mi300x-rocm62-healthy", "node-f": "mi300x-faulty"}


def cond(fk, node):
    obj = fk.get("nodes", node)
    return next((c for c in obj["status"].get("conditions") or [] if c["type"] == "VigilHealthy"), None)


def ours(fk, node):
    return [t for t in fk.get("nodes", node)["spec"].get("taints") or [] if t["key"] == P.TAINT_KEY]


@pytest.fixture
def cluster(fake, tmp_path):
    tokens = {n: agent_pod(fake, n, tmp_path) for n in NODES}
    reps = [replica(fake, "agg-0"), replica(fake, "agg-1")]
    wait_for(lambda: leader_of(reps), what="a leader")
    procs = []
    yield fake, reps, tokens, procs
    for p in procs:
        stop(p)
    stop_replicas(reps)


def test_faulty_node_cordoned_others_untouched_and_it_survives_a_replica_kill(cluster, tmp_path):
    fake, reps, tokens, procs = cluster
    targets = ",".join(f"127.0.0.1:{r.port}" for r in reps)
    log = open(tmp_path / "agents.log", "w")
    for node, fixture in NODES.items():
        procs.append(start_agent(fixture, node, targets, tmp_path / f"{node}.db", tokens[node], log))
    wait_for(lambda: fake.get("nodes", "node-f")["spec"].get("unschedulable") and cond(fake, "node-f"), 30,
             what="node-f cordoned")
    wait_for(lambda: all(cond(fake, n) and cond(fake, n)["status"] == "True" for n in ("node-a", "node-b")), 30,
             what="healthy nodes reported")
    c = cond(fake, "node-f")
    assert (c["status"], c["reason"]) == ("False", "gpu.ecc.uncorrectable") and "gpu3" in c["message"]
    assert len(ours(fake, "node-f")) == 1
    for n in ("node-a", "node-b"):
        node = fake.get("nodes", n)
        assert not node["spec"].get("unschedulable") and not ours(fake, n)
        assert P.RECORD not in (node["metadata"].get("annotations") or {})
    # kill the leader mid-stream: the standby takes the Lease, the agents fail over, nothing is done twice
    old = leader_of(reps)
    old.stop(kill=True)
    other = next(r for r in reps if r is not old)
    wait_for(lambda: other.replica.leader.is_leader(), 15, what="failover")
    wait_for(lambda: other.replica.metrics.streams == 3, 20, what="agents reconnected to the new leader")
    wait_for(lambda: other.run(lambda: len(other.replica.engine._last)) == 3, 20, what="new leader judged all")
    assert len(ours(fake, "node-f")) == 1
    reasons = [e["reason"] for e in fake.list("events", "default") if e["involvedObject"]["name"] == "node-f"]
    assert reasons.count("VigilCordoned") == 1
    text = other.replica.metrics.render().decode()
    assert "vigil_aggregator_leader 1.0" in text and "vigil_aggregator_streams 3.0" in text


def test_wrong_node_token_is_refused_and_counted(cluster):
    fake, reps, tokens, _ = cluster
    lead = leader_of(reps)
    token = tokens["node-a"].read_text()
    with grpc.insecure_channel(f"127.0.0.1:{lead.port}") as ch:
        stub = pbg.HealthStub(ch)

        def attempt(node, tok):
            hello = pb.AgentMessage(hello=pb.Hello(node=node, boot_id="b", spool_epoch="e"))
            md = (("authorization", f"Bearer {tok}"),) if tok else ()
            return next(iter(stub.Stream(iter([hello]), metadata=md, timeout=5)))
        with pytest.raises(grpc.RpcError) as e:
            attempt("node-f", token)  # node-a's agent pretending to report for node-f
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            attempt("node-a", None)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert attempt("node-a", token).HasField("welcome")
    standby = next(r for r in reps if r is not lead)
    with grpc.insecure_channel(f"127.0.0.1:{standby.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            hello = pb.AgentMessage(hello=pb.Hello(node="node-a", boot_id="b", spool_epoch="e"))
            next(iter(pbg.HealthStub(ch).Stream(iter([hello]), metadata=(("authorization", f"Bearer {token}"),),
                                                timeout=5)))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    m = lead.replica.metrics
    assert m.refused["wrong_node"] == 1 and m.refused["missing_token"] == 1
    assert standby.replica.metrics.refused["standby"] == 1
    assert fake.get("nodes", "node-f")["spec"].get("unschedulable") is None


def test_every_event_delivered_through_replica_and_agent_kills(fake, tmp_path):
    """Two agents spool info events continuously. Mid-stream the leader replica is killed (no Lease release,
    streams cut) and one agent is SIGKILLed and restarted on its spool. At the end every spooled event
    (node, epoch, seq) has been applied, none was applied twice by one replica, and an event applied by both
    replicas can only be one the killed replica had not acknowledged."""
    tokens = {n: agent_pod(fake, n, tmp_path) for n in ("node-a", "node-b")}
    journals = [tmp_path / "j0.jsonl", tmp_path / "j1.jsonl"]
    reps = [replica(fake, f"agg-{i}", journal=str(journals[i])) for i in range(2)]
    log = open(tmp_path / "emitters.log", "w")
    procs = {}
    try:
        wait_for(lambda: leader_of(reps), what="a leader")
        targets = ",".join(f"127.0.0.1:{r.port}" for r in reps)
        spools = {n: tmp_path / f"{n}.db" for n in tokens}
        for n in tokens:
            procs[n] = start_emitter(n, targets, spools[n], tokens[n], log)
        lead = leader_of(reps)
        wait_for(lambda: lead.replica.metrics.events.get("info", 0) > 500, 30, what="events flowing")
        lead.stop(kill=True)
        other = next(r for r in reps if r is not lead)
        wait_for(lambda: other.replica.metrics.events.get("info", 0) > 500, 30, what="events after failover")
        kill(procs["node-a"])
        procs["node-a"] = start_emitter("node-a", targets, spools["node-a"], tokens["node-a"], log)
        wait_for(lambda: other.replica.metrics.events.get("info", 0) > 1200, 30, what="events after agent kill")
        for n in procs:
            kill(procs[n])  # stop producing; then let a fresh client drain each spool
        for n in procs:
            procs[n] = start_emitter(n, targets, spools[n], tokens[n], log, every=3600)
        wait_for(lambda: all(sqlite3.connect(spools[n]).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
                             for n in spools), 30, what="spools drained")
    finally:
        for p in procs.values():
            kill(p)
        for r in reps:
            r.stop()
    applied = [{}, {}]  # per replica: (node, epoch, seq) -> count
    for i, j in enumerate(journals):
        for line in j.read_text().splitlines() if j.exists() else []:
            rec = json.loads(line)
            for s in rec["seqs"]:
                key = (rec["node"], rec["epoch"], s)
                applied[i][key] = applied[i].get(key, 0) + 1
    for i in range(2):
        assert all(v == 1 for v in applied[i].values()), f"replica {i} applied an event twice"
    union = set(applied[0]) | set(applied[1])
    total = 0
    for n, path in spools.items():
        db = sqlite3.connect(path)
        epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
        last = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0]) - 1
        dropped = int(db.execute("SELECT value FROM meta WHERE key='dropped_info'").fetchone()[0])
        assert dropped == 0
        want = {(n, epoch, s) for s in range(1, last + 1)}
        missing = want - union
        assert not missing, f"{n}: {len(missing)} events never applied, e.g. {sorted(missing)[:5]}"
        total += last
    both = set(applied[0]) & set(applied[1])
    assert len(both) <= 2 * 2000, "redelivery is bounded by the agents' in-flight window"
    print(f"\n{total} events spooled, all applied; {len(both)} applied by both replicas (unacked at the kill)")
