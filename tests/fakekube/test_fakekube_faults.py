"""Injected faults and the request log, as the official client experiences them.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.rest import ApiException

CORDON = {"spec": {"unschedulable": True}}


def test_injected_500_reaches_the_client_then_clears(kube, core):
    kube.add_node("gpu-1")
    fault = kube.faults.add("PATCH", r"^/api/v1/nodes/gpu-1$", status=500, times=1)
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", CORDON)
    body = json.loads(exc.value.body)
    assert exc.value.status == 500 and body["reason"] == "InternalError" and body["kind"] == "Status"
    assert core.read_node("gpu-1").spec.unschedulable is None  # the failed request changed nothing
    assert core.patch_node("gpu-1", CORDON).spec.unschedulable is True
    assert fault.hits == 1
    assert [r.status for r in kube.requests("PATCH")] == [500, 200]


def test_injected_503_and_429(kube, core):
    kube.add_node("gpu-1")
    kube.faults.add("GET", "/nodes", status=503)
    with pytest.raises(ApiException) as exc:
        core.list_node()
    assert exc.value.status == 503 and json.loads(exc.value.body)["reason"] == "ServiceUnavailable"
    # with Retry-After, urllib3 itself waits and re-sends an idempotent request: the caller never sees it
    kube.faults.add("GET", "/nodes", status=503, retry_after=1)
    assert core.list_node().items[0].metadata.name == "gpu-1"
    assert [r.status for r in kube.requests("GET", "/nodes")][-2:] == [503, 200]
    # a PATCH is not re-sent
    kube.faults.add(("PUT", "PATCH"), "/nodes/", status=429, retry_after=1, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            core.patch_node("gpu-1", CORDON)
        assert exc.value.status == 429
    core.patch_node("gpu-1", CORDON)


def test_injected_timeout_is_a_client_timeout_and_applies_nothing(kube, core):
    kube.add_node("gpu-1")
    kube.faults.add("PATCH", r"/nodes/gpu-1$", timeout_seconds=2)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.patch_node("gpu-1", CORDON, _request_timeout=0.3)
    assert core.read_node("gpu-1").spec.unschedulable is None
    assert kube.requests("PATCH")[0].status is None  # never answered


def test_timeout_after_apply_is_the_ambiguous_case(kube, core):
    """The write lands but the answer never comes: a retry must not act twice."""
    kube.add_node("gpu-1")
    kube.faults.add("PATCH", r"/nodes/gpu-1$", timeout_seconds=2, after_apply=True)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        core.patch_node("gpu-1", CORDON, _request_timeout=0.3)
    assert core.read_node("gpu-1").spec.unschedulable is True


def test_urllib3_silently_retries_a_put_that_timed_out(kube, core):
    """Worth knowing: the client's urllib3 pool re-sends idempotent methods (GET, PUT, DELETE) after a
    read timeout, so a PUT whose first attempt landed comes back 409 from its own retry."""
    kube.add_node("gpu-1")
    node = core.read_node("gpu-1")
    node.spec.unschedulable = True
    kube.faults.add("PUT", r"/nodes/gpu-1$", timeout_seconds=2, after_apply=True)
    with pytest.raises(ApiException) as exc:
        core.replace_node("gpu-1", node, _request_timeout=0.3)
    assert exc.value.status == 409
    assert [r.status for r in kube.requests("PUT")] == [None, 409]
    assert core.read_node("gpu-1").spec.unschedulable is True


def test_dropped_connection_and_outage(kube, core):
    kube.add_node("gpu-1")
    kube.faults.add("PATCH", r"/nodes/gpu-1$", drop=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        core.patch_node("gpu-1", CORDON)
    port = kube.port
    kube.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_node("gpu-1")
    kube.start()
    assert kube.port == port and core.read_node("gpu-1").metadata.name == "gpu-1"


def test_delay_adds_latency_only(kube, core):
    import time
    kube.add_node("gpu-1")
    kube.faults.add("PATCH", "", delay=0.3, times=None)
    start = time.monotonic()
    assert core.patch_node("gpu-1", CORDON).spec.unschedulable is True
    assert time.monotonic() - start >= 0.3


def test_request_log_shows_exactly_one_cordon_patch(kube, core):
    kube.add_node("gpu-1")
    kube.add_node("gpu-2")
    kube.clear_requests()
    core.patch_node("gpu-1", CORDON)
    core.patch_node_status("gpu-1", {"status": {"conditions": [{"type": "VigilHealthy", "status": "False"}]}})
    core.read_node("gpu-2")
    patches = kube.requests("PATCH", r"^/api/v1/nodes/[^/]+$")
    assert len(patches) == 1
    assert patches[0].content_type == "application/strategic-merge-patch+json"
    assert patches[0].json == CORDON and patches[0].user == "kubernetes-admin"
    assert len(kube.requests(writes_only=True)) == 2
    assert kube.requests("PATCH", "/status$")[0].json["status"]["conditions"][0]["type"] == "VigilHealthy"
