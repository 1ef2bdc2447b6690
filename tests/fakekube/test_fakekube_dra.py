"""Dynamic Resource Allocation objects, PodDisruptionBudgets and the Eviction subresource through the official
Python client (ResourceV1Api, ResourceV1beta2Api, PolicyV1Api, CoreV1Api.create_namespaced_pod_eviction).

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be installed here: see
REAL-PARTS.md). The shapes are the real OpenAPI's (schema.json, generated from the 1.37 definitions for these
kinds); the validation is the API reference's (resource.k8s.io/v1 DeviceTaint, ResourceSlice; policy/v1).
"""
from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agent.fakekube import FakeKube

GPUS = [{"name": f"gpu-{i}", "attributes": {"uuid": {"string": f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000"},
                                             "pcieBusID": {"string": f"0000:{0x18 + i:02x}:00.0"}}}
        for i in range(8)]


def rule(name="r1", effect="NoSchedule", **sel):
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": {"name": name},
            "spec": {"deviceSelector": sel or {"driver": "gpu.nvidia.com", "pool": "gpu-1", "device": "gpu-3"},
                     "taint": {"key": "vigil.dev/unhealthy", "value": "gpu.ecc.uncorrectable", "effect": effect}}}


def test_resource_slices_list_by_node_and_rules_round_trip(kube):
    kube.add_node("gpu-1")
    kube.add_resource_slice("gpu-1", "gpu.nvidia.com", GPUS)
    kube.add_resource_slice("gpu-2", "gpu.nvidia.com", GPUS[:2], name="other")
    api = client.ResourceV1Api(kube.api_client())
    slices = api.list_resource_slice(field_selector="spec.nodeName=gpu-1").items
    assert [s.metadata.name for s in slices] == ["gpu-1-gpu-nvidia-com"]
    assert [d.name for d in slices[0].spec.devices] == [f"gpu-{i}" for i in range(8)]
    made = api.create_device_taint_rule(rule())
    assert made.spec.taint.effect == "NoSchedule" and made.metadata.uid
    # one store seen through both versions, as the real server does
    beta = client.ResourceV1beta2Api(kube.api_client())
    assert [r.metadata.name for r in beta.list_device_taint_rule().items] == ["r1"]
    api.delete_device_taint_rule("r1")
    assert api.list_device_taint_rule().items == []


@pytest.mark.parametrize("change, field", [
    (lambda r: r["spec"]["taint"].update(effect="PreferNoSchedule"), "spec.taint.effect"),
    (lambda r: r["spec"]["taint"].update(key="not a key"), "spec.taint.key"),
    (lambda r: r["spec"]["taint"].update(value="x" * 64), "spec.taint.value"),
    (lambda r: r["spec"]["deviceSelector"].update(device="GPU_3"), "spec.deviceSelector.device"),
    (lambda r: r["spec"]["deviceSelector"].update(driver="d" * 64 + ".com"), "spec.deviceSelector.driver"),
])
def test_device_taint_rule_validation_is_the_real_servers(kube, change, field):
    body = rule()
    change(body)
    with pytest.raises(ApiException) as e:
        client.ResourceV1Api(kube.api_client()).create_device_taint_rule(body)
    assert e.value.status == 422
    causes = json.loads(e.value.body)["details"]["causes"]
    assert field in [c["field"] for c in causes]


def test_a_rule_without_a_taint_is_refused(kube):
    """The client's own models refuse it before sending; a raw request (kubectl --validate=false) gets the 422."""
    import urllib.error
    import urllib.request

    body = rule()
    del body["spec"]["taint"]
    req = urllib.request.Request(kube.url + "/apis/resource.k8s.io/v1/devicetaintrules", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 422
    assert [c["field"] for c in json.loads(e.value.read())["details"]["causes"]] == ["spec.taint"]


def test_resource_slice_validation(kube):
    api = client.ResourceV1Api(kube.api_client())
    bad = {"metadata": {"name": "s"}, "spec": {"driver": "gpu.nvidia.com", "pool": {"name": "p", "generation": 1,
           "resourceSliceCount": 1}, "devices": [{"name": "gpu-0"}, {"name": "gpu-0"}]}}  # no node, a duplicate
    with pytest.raises(ApiException) as e:
        api.create_resource_slice(bad)
    fields = [c["field"] for c in json.loads(e.value.body)["details"]["causes"]]
    assert "spec" in fields and "spec.devices[1].name" in fields


def test_discovery_offers_what_the_server_serves():
    with FakeKube(resource_versions=("v1beta2",)) as kube:
        groups = {g.name: g for g in client.ApisApi(kube.api_client()).get_api_versions().groups}
        assert [v.version for v in groups["resource.k8s.io"].versions] == ["v1beta2"]
        with pytest.raises(ApiException) as e:
            client.ResourceV1Api(kube.api_client()).list_device_taint_rule()
        assert e.value.status == 404
    with FakeKube(resource_versions=()) as kube:
        groups = [g.name for g in client.ApisApi(kube.api_client()).get_api_versions().groups]
        assert "resource.k8s.io" not in groups and "policy" in groups


def test_eviction_honours_the_disruption_budget(kube):
    core = client.CoreV1Api(kube.api_client())
    policy = client.PolicyV1Api(kube.api_client())
    kube.add_pod("ml", "train-0", node_name="gpu-1", labels={"job": "train"}, owner=("Job", "train"))
    policy.create_namespaced_pod_disruption_budget("ml", {
        "metadata": {"name": "train"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"job": "train"}}}})
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "train-0", "namespace": "ml"}}
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod_eviction("train-0", "ml", body)
    assert e.value.status == 429
    status = json.loads(e.value.body)
    assert status["reason"] == "TooManyRequests" and status["details"]["causes"][0]["reason"] == "DisruptionBudget"
    assert kube.get("pods", "train-0", "ml") is not None
    # a replacement becomes ready: the budget allows one disruption, the eviction goes through
    kube.add_pod("ml", "train-1", node_name="gpu-2", labels={"job": "train"})
    core.create_namespaced_pod_eviction("train-0", "ml", body)
    assert kube.get("pods", "train-0", "ml") is None
    # dry run deletes nothing; a pod without a budget is evicted at once
    kube.add_pod("ml", "solo", node_name="gpu-1")
    core.create_namespaced_pod_eviction("solo", "ml", {"metadata": {"name": "solo"},
                                                       "deleteOptions": {"dryRun": ["All"]}})
    assert kube.get("pods", "solo", "ml") is not None
    core.create_namespaced_pod_eviction("solo", "ml", {"metadata": {"name": "solo"}})
    assert kube.get("pods", "solo", "ml") is None
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod_eviction("gone", "ml", {"metadata": {"name": "gone"}})
    assert e.value.status == 404


def test_two_budgets_on_one_pod_is_a_server_error(kube):
    core = client.CoreV1Api(kube.api_client())
    policy = client.PolicyV1Api(kube.api_client())
    kube.add_pod("ml", "p", labels={"a": "1"})
    for n in ("one", "two"):
        policy.create_namespaced_pod_disruption_budget("ml", {
            "metadata": {"name": n}, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "1"}}}})
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod_eviction("p", "ml", {"metadata": {"name": "p"}})
    assert e.value.status == 500


def test_pod_owner_references(kube):
    core = client.CoreV1Api(kube.api_client())
    kube.add_pod("ml", "w-0", node_name="gpu-1", owner=("PyTorchJob", "bert"))
    pod = core.read_namespaced_pod("w-0", "ml")
    ref = pod.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.api_version, ref.controller) == ("PyTorchJob", "bert", "kubeflow.org/v1", True)
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-1").items] \
        == ["w-0"]
