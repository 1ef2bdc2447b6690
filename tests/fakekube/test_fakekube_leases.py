"""coordination.k8s.io/v1 Leases through the official Python client.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

NS = "vigil"


def lease(name: str, holder: str | None, renew: dt.datetime | None = None) -> client.V1Lease:
    return client.V1Lease(metadata=client.V1ObjectMeta(name=name),
                          spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15,
                                                  lease_transitions=0, renew_time=renew, acquire_time=renew))


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=123456)


def test_lease_create_update_conflict_delete(kube, coord):
    created = coord.create_namespaced_lease(NS, lease("vigil-aggregator", "replica-a", now()))
    assert created.spec.holder_identity == "replica-a" and created.spec.lease_transitions == 0
    assert created.spec.renew_time.microsecond == 123456

    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(NS, lease("vigil-aggregator", "replica-b", now()))
    body = json.loads(exc.value.body)
    assert exc.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "vigil-aggregator", "group": "coordination.k8s.io", "kind": "leases"}
    assert body["message"] == 'leases.coordination.k8s.io "vigil-aggregator" already exists'

    mine = coord.read_namespaced_lease("vigil-aggregator", NS)
    mine.spec.renew_time = now() + dt.timedelta(seconds=5)
    renewed = coord.replace_namespaced_lease("vigil-aggregator", NS, mine)
    assert int(renewed.metadata.resource_version) > int(mine.metadata.resource_version)

    mine.spec.holder_identity = "replica-b"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("vigil-aggregator", NS, mine)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"

    patched = coord.patch_namespaced_lease("vigil-aggregator", NS, {"spec": {"leaseTransitions": 1}},
                                           _content_type="application/merge-patch+json")
    assert patched.spec.lease_transitions == 1 and patched.spec.holder_identity == "replica-a"

    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(
        resource_version=renewed.metadata.resource_version))
    with pytest.raises(ApiException) as exc:
        coord.delete_namespaced_lease("vigil-aggregator", NS, body=stale)
    assert exc.value.status == 409 and "Precondition failed" in json.loads(exc.value.body)["message"]
    fresh = client.V1DeleteOptions(preconditions=client.V1Preconditions(
        resource_version=patched.metadata.resource_version))
    coord.delete_namespaced_lease("vigil-aggregator", NS, body=fresh)
    with pytest.raises(ApiException) as exc:
        coord.read_namespaced_lease("vigil-aggregator", NS)
    assert exc.value.status == 404


def test_two_replicas_racing_for_a_free_lease_one_wins(kube, coord):
    coord.create_namespaced_lease(NS, lease("vigil-aggregator", "", now()))
    seen_a = coord.read_namespaced_lease("vigil-aggregator", NS)
    seen_b = coord.read_namespaced_lease("vigil-aggregator", NS)
    assert seen_a.spec.holder_identity == ""  # *string on the server: an empty holder is kept, not dropped
    seen_a.spec.holder_identity, seen_b.spec.holder_identity = "replica-a", "replica-b"
    results = []
    for attempt in (seen_a, seen_b):
        try:
            coord.replace_namespaced_lease("vigil-aggregator", NS, attempt)
            results.append("won")
        except ApiException as exc:
            results.append(exc.status)
    assert results == ["won", 409]
    assert coord.read_namespaced_lease("vigil-aggregator", NS).spec.holder_identity == "replica-a"


def test_microtime_needs_exactly_six_fractional_digits(kube, coord):
    """Python's isoformat() drops the fraction when microsecond == 0; the real server then answers 400."""
    on_the_second = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(NS, lease("l1", "a", on_the_second))
    body = json.loads(exc.value.body)
    assert exc.value.status == 400 and body["reason"] == "BadRequest"
    assert "2006-01-02T15:04:05.000000Z07:00" in body["message"]

    naive = dt.datetime(2025, 1, 1, 12, 0, 0, 5)
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(NS, lease("l1", "a", naive))
    assert exc.value.status == 400

    ok = coord.create_namespaced_lease(NS, lease("l1", "a", on_the_second.replace(microsecond=5)))
    raw = kube.get("leases", "l1", NS)
    assert raw["spec"]["renewTime"] == "2025-01-01T12:00:00.000005Z"
    assert ok.spec.renew_time == on_the_second.replace(microsecond=5)


def test_lease_errors(kube, coord):
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease("no-such-ns", lease("l1", "a", now()))
    assert exc.value.status == 404 and json.loads(exc.value.body)["message"] == 'namespaces "no-such-ns" not found'
    bad = lease("l1", "a", now())
    bad.spec.lease_duration_seconds = 0
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(NS, bad)
    assert exc.value.status == 422
    with_rv = lease("l1", "a", now())
    with_rv.metadata.resource_version = "5"
    with pytest.raises(ApiException) as exc:
        coord.create_namespaced_lease(NS, with_rv)
    assert exc.value.status == 500
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("l2", NS, lease("l2", "a", now()))
    assert exc.value.status == 404
