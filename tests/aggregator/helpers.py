"""Shared pieces of the aggregator tests (a module of its own: several rooms have a conftest.py).

An Engine on a fake clock against the fake API, reconciled by hand (test_actions.py, through conftest.py's
`harness`); and, end to end, the fake API with nodes, agent pods and their tokens, aggregator replicas (each on
its own event loop, real gRPC on loopback) and agents as real processes (test_e2e.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator.app import Replica, ReplicaOptions, ReplicaThread
from agent.aggregator.engine import AggregatorConfig, Engine
from agent.aggregator.kube import Kube
from agent.aggregator.lease import StaticLeader
from agent.aggregator.policy import BudgetConfig, PolicyConfig
from tests.support import ROOT
from tests.support.clock import FakeClock

# ---- the engine, reconciled by hand ----------------------------------------------------------------------------
OTHER_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def fatal(check="gpu.ecc.uncorrectable", entity="gpu3", message="2 uncorrectable ECC errors"):
    return pb.Problem(check=check, entity=entity, status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL,
                      message=message)


def event(seq, status=pb.STATUS_UNHEALTHY, kind=pb.KIND_STATE, check="gpu.ecc.uncorrectable", entity="gpu3"):
    return pb.Event(seq=seq, kind=kind, check=check, entity=entity, status=status, severity=pb.SEVERITY_FATAL,
                    message="m")


class Harness:
    """An Engine on a fake clock against the fake API, reconciled by hand (no workers, no ticker)."""

    def __init__(self, fk, **cfg):
        self.fk = fk
        self.clock = FakeClock(1000.0)
        self.wall = FakeClock(1_800_000_000.0)
        budget = cfg.pop("budget", BudgetConfig())
        policy = cfg.pop("policy", PolicyConfig(healthy_delay=300, heartbeat_timeout=60))
        self.kube = Kube(fk.api_client())
        self.engine = Engine(AggregatorConfig(policy=policy, budget=budget, identity="test", **cfg), self.kube,
                             StaticLeader("test"), clock=self.clock, wall=self.wall)
        self.loop = asyncio.new_event_loop()

    def reconcile(self, *names):
        for n in names:
            self.loop.run_until_complete(self.engine.reconcile(n))
        self.loop.run_until_complete(self.engine.drain_reports())

    def hello(self, node, digest=(), boot="b1", epoch="e1", seq=0):
        return self.engine.hello(node, boot, epoch, list(digest), seq)

    def node(self, name):
        return self.fk.get("nodes", name)

    def close(self):
        self.loop.close()
        self.engine._executor.shutdown(wait=False)


# ---- end to end: replicas on loopback, agents as processes ------------------------------------------------------
def wait_for(cond, timeout=20.0, every=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def agent_pod(fk, node, tmp_path):
    """A node, the agent pod scheduled on it, and its projected token (audience vigil) in a file."""
    if fk.get("nodes", node) is None:
        fk.add_node(node)
    pod = f"vigil-agent-{node}"
    fk.add_pod("vigil", pod, node_name=node, service_account="vigil-agent")
    token = fk.issue_service_account_token("vigil", "vigil-agent", pod=pod)
    path = tmp_path / f"token-{node}"
    path.write_text(token)
    return path


def replica(fk, ident, *, dry_run=False, budget=None, healthy_delay=5.0, journal=None, lease=True, **more):
    cfg = AggregatorConfig(policy=PolicyConfig(healthy_delay=healthy_delay, heartbeat_timeout=10),
                           budget=budget or BudgetConfig(), dry_run=dry_run, identity=ident,
                           heartbeat_seconds=1, tick_seconds=0.2, **more)
    opts = ReplicaOptions(listen="127.0.0.1:0", namespace="vigil", lease_duration=3, renew_deadline=2,
                          retry_period=0.3, use_lease=lease, journal=journal)
    return ReplicaThread(Replica(cfg, opts, Kube(fk.api_client())))


def leader_of(replicas):
    return next((r for r in replicas if r.replica.leader.is_leader()), None)


def start_agent(fixture, node, targets, spool, token, log):
    cmd = [sys.executable, "-m", "agent.cli", "--snapshot", str(ROOT / "fixtures" / "nodes" / fixture),
           "--node-name", node, "--only", "gpu", "--listen", "127.0.0.1:0", "--aggregator", targets,
           "--spool", str(spool), "--token-file", str(token), "--log-level", "info"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_emitter(node, targets, spool, token, log, every=0.002):
    """A process that runs the real StreamClient and spools info events as fast as it can (tests count them)."""
    code = (
        "import sys, time, logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from agent.stream.client import StreamClient, StreamSettings\n"
        f"c = StreamClient(StreamSettings({targets.split(',')!r}, {str(spool)!r}, token_file={str(token)!r},"
        " heartbeat_seconds=1, max_info=100000, max_events=200000, batch_size=50), "
        f"{node!r}, 'boot-1')\n"
        "c.start()\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        f"    c.info('container.oom_kill', 'containers', f'pod-{{i}}', 'OOM kill')\n"
        f"    time.sleep({every})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            kill(proc)


# ---- a hand-driven agent stream -----------------------------------------------------------------------------------
def stream_replica(fk, **cfg):
    """One replica (no Lease) against the fake API, with TokenReview auth, real gRPC on loopback. `applied` lists
    every (epoch, seq) the engine applied, as its --journal would."""
    policy = cfg.pop("policy", PolicyConfig(healthy_delay=5.0, heartbeat_timeout=10))
    r = ReplicaThread(Replica(AggregatorConfig(policy=policy, identity="agg", heartbeat_seconds=1, tick_seconds=0.1,
                                               **cfg),
                              ReplicaOptions(listen="127.0.0.1:0", use_lease=False), Kube(fk.api_client())))
    r.applied = []
    r.replica.engine.applied_hooks.append(lambda node, boot, epoch, seqs: r.applied.extend((epoch, s) for s in seqs))
    return r


class RawAgent:
    """An agent stream driven by hand over real gRPC (the sync client): a test sends exactly the messages it
    needs, malformed ones included, and reads each answer."""

    def __init__(self, port, token, timeout=15.0):
        import queue

        import grpc

        from agent._proto.vigil.v1 import health_pb2_grpc as pbg

        self._q = queue.Queue()
        self._ch = grpc.insecure_channel(f"127.0.0.1:{port}")

        def requests():
            while True:
                m = self._q.get()
                if m is None:
                    return
                yield m
        md = (("authorization", f"Bearer {token}"),) if token else ()
        self.call = pbg.HealthStub(self._ch).Stream(requests(), metadata=md, timeout=timeout)

    def send(self, **body):
        self._q.put(pb.AgentMessage(**body))

    def hello(self, node, digest=(), boot="b1", epoch="e1", digest_seq=0, rejections=False, validation=False):
        self.send(hello=pb.Hello(node=node, boot_id=boot, spool_epoch=epoch, agent_version="test", digest=list(digest),
                                 digest_seq=digest_seq, handles_rejections=rejections, handles_validation=validation))
        return self.read().welcome

    def batch(self, events, boot="b1"):
        self.send(batch=pb.Batch(boot_id=boot, events=list(events)))
        return self.read().ack

    def read(self):
        return next(self.call)

    def end(self):
        """(code, details) the stream ended with, reading what is left."""
        import grpc

        try:
            while True:
                next(self.call)
        except grpc.RpcError as e:
            return e.code(), e.details()
        except StopIteration:
            return grpc.StatusCode.OK, ""

    def close(self):
        self._q.put(None)
        self.call.cancel()
        self._ch.close()


# ---- which Kubernetes calls the aggregator made (the RBAC they need) ----------------------------------------------
CORE_CALLS = {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "update"), ("", "nodes/status", "patch"),
              ("authentication.k8s.io", "tokenreviews", "create"), ("", "events", "create"), ("", "pods", "get"),
              ("", "pods", "list"),
              ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
              ("coordination.k8s.io", "leases", "update")}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def seen_calls(fk) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every request the fake API server answered, discovery left out (every
    authenticated user may read it)."""
    out = set()
    for r in fk.requests():
        parts = [p for p in r.path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            continue
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if not rest:
            continue  # discovery
        group = "" if parts[0] == "api" else parts[1]
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
        verb = "list" if r.method == "GET" and len(rest) == 1 else _VERBS[r.method]
        out.add((group, resource, verb))
    return out


def declared(*features) -> set[tuple[str, str, str]]:
    return {c[:3] for f in features for c in f.API_CALLS}


def events_with_reason(fk, reason):
    """The Events (namespace default, where Vigil writes them) with this reason."""
    return [e for e in fk.list("events", "default") if e["reason"] == reason]


def stop_replicas(reps):
    """Stop every replica a test started; one the test killed already raises, which is nothing to stop."""
    for r in reps:
        try:
            r.stop()
        except Exception:  # noqa: BLE001 - a killed replica
            pass


def close_setups(made):
    """Teardown of the (fake API, replica, raw agent) triples a setup fixture made."""
    for fk, r, a in made:
        a.close()
        r.stop()
        fk.close()

