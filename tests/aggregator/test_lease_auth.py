"""Leader election on a coordination.k8s.io Lease and agent identity through TokenReview, against the fake
API server through the official client."""
import asyncio

import pytest

from agent.aggregator.auth import AuthError, TokenReviewer
from agent.aggregator.kube import Kube
from agent.aggregator.lease import LeaderElector, NotLeader
from agent.aggregator.policy import ADMIT, BudgetConfig, admit, reset
from tests.support.clock import FakeClock

SA = "system:serviceaccount:vigil:vigil-agent"


def elector(fk, ident, clock):
    return LeaderElector(Kube(fk.api_client()), "vigil", "vigil-aggregator", ident, duration=15,
                         renew_deadline=10, retry_period=2, clock=clock)


def test_one_leader_and_takeover_only_after_the_lease_duration(fake):
    clock = FakeClock(100.0)
    a, b = elector(fake, "a", clock), elector(fake, "b", clock)
    run = asyncio.new_event_loop().run_until_complete
    run(a.step())
    run(b.step())
    assert a.is_leader() and not b.is_leader()
    clock.step(5)
    run(a.step())  # a renews
    run(b.step())
    assert a.is_leader() and not b.is_leader()
    # a dies: no more renewals. b sees the same record for a full lease duration before taking over
    clock.step(14)
    run(b.step())
    assert not b.is_leader()
    assert not a.is_leader(), "a holder that could not renew within renew_deadline stops acting"
    clock.step(2)
    run(b.step())
    assert b.is_leader()
    lease = fake.get("leases", "vigil-aggregator", "vigil")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    run(a.step())  # a comes back: it sees b's lease and stays standby
    assert not a.leader


def test_clean_release_hands_over_at_once(fake):
    clock = FakeClock(100.0)
    a, b = elector(fake, "a", clock), elector(fake, "b", clock)
    run = asyncio.new_event_loop().run_until_complete
    run(a.step())
    run(a.release())
    run(b.step())
    clock.step(1.5)  # the released lease has a 1 s duration
    run(b.step())
    assert b.is_leader()


def test_ledger_on_the_lease_with_optimistic_concurrency(fake):
    clock = FakeClock(100.0)
    a = elector(fake, "a", clock)
    run = asyncio.new_event_loop().run_until_complete
    run(a.step())
    budget = BudgetConfig(max_nodes=1)
    fake.inject_conflicts("leases", "vigil-aggregator", times=2, namespace="vigil")
    assert run(a.update_ledger(lambda led: admit(led, "n1", 0, budget, 10))) == ADMIT
    b = elector(fake, "b", clock)  # another replica reads the same ledger from the Lease
    assert b.ledger().entries == () and a.ledger().entries[0][0] == "n1"
    run(b.step())
    assert b.ledger().entries[0][0] == "n1"
    run(a.step())  # a renewal keeps the ledger
    assert a.ledger().entries[0][0] == "n1"
    with pytest.raises(NotLeader):
        run(b.update_ledger(lambda led: (None, reset(led))))


def reviewer(fake):
    return TokenReviewer(Kube(fake.api_client()), {SA}, "vigil", run=lambda fn: asyncio.to_thread(fn))


def md(token):
    return (("authorization", f"Bearer {token}"),)


def test_token_review_node_from_extra(fake):
    fake.add_node("gpu-1")
    fake.add_pod("vigil", "agent-x", node_name="gpu-1", service_account="vigil-agent")
    token = fake.issue_service_account_token("vigil", "vigil-agent", pod="agent-x")
    ident = asyncio.run(reviewer(fake).authenticate(md(token)))
    assert (ident.username, ident.node) == (SA, "gpu-1")


def test_token_review_node_from_pod_lookup_before_1_30():
    from agent.fakekube.server import FakeKube

    with FakeKube(kube_version="1.29.0") as fk:
        fk.add_node("gpu-2")
        fk.add_pod("vigil", "agent-y", node_name="gpu-2", service_account="vigil-agent")
        token = fk.issue_service_account_token("vigil", "vigil-agent", pod="agent-y")
        r = reviewer(fk)
        assert asyncio.run(r.authenticate(md(token))).node == "gpu-2"
        assert fk.requests("GET", r"/namespaces/vigil/pods/agent-y")


@pytest.mark.parametrize("case", ["missing", "invalid", "wrong_user", "wrong_audience", "unbound"])
def test_token_refusals(fake, case):
    fake.add_node("gpu-1")
    fake.add_pod("vigil", "agent-x", node_name="gpu-1", service_account="vigil-agent")
    fake.add_pod("vigil", "other", node_name="gpu-1", service_account="default")
    token = {
        "missing": None,
        "invalid": "not-a-token",
        "wrong_user": fake.issue_service_account_token("vigil", "default", pod="other"),
        "wrong_audience": fake.issue_service_account_token("vigil", "vigil-agent", pod="agent-x",
                                                           audiences=("https://kubernetes.default.svc",)),
        "unbound": fake.issue_service_account_token("vigil", "vigil-agent"),
    }[case]
    want = {"missing": "missing_token", "invalid": "invalid_token", "wrong_user": "wrong_user",
            "wrong_audience": ("invalid_token", "wrong_audience"), "unbound": "no_node"}[case]
    with pytest.raises(AuthError) as e:
        asyncio.run(reviewer(fake).authenticate(md(token) if token else ()))
    assert e.value.reason in (want if isinstance(want, tuple) else (want,))
