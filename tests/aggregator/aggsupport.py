"""Shared pieces of the aggregator tests (a module of its own: several rooms have a conftest.py)."""
import asyncio

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator.engine import AggregatorConfig, Engine
from agent.aggregator.kube import Kube
from agent.aggregator.lease import StaticLeader
from agent.aggregator.policy import BudgetConfig, PolicyConfig

OTHER_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def step(self, s):
        self.t += s


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
        self.clock = Clock()
        self.wall = Clock(1_800_000_000.0)
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
