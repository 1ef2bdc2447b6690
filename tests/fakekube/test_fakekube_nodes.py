"""Nodes through the official Python client: merge semantics, /status, resourceVersion, validation.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

HUMAN_TAINT = {"key": "team.example/reserved", "value": "ml", "effect": "NoSchedule"}
VIGIL_TAINT = {"key": "vigil.dev/unhealthy", "effect": "NoSchedule"}


def vigil_condition(status: str, reason: str, message: str = "detail") -> dict:
    return {"type": "VigilHealthy", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z", "lastHeartbeatTime": "2025-01-01T00:00:00Z"}


def types(node) -> list[str]:
    return [c.type for c in node.status.conditions]


def status_of(exc_info) -> dict:
    return json.loads(exc_info.value.body)


def test_conditions_merge_by_type_through_status(kube, core):
    kube.add_node("gpu-1")
    node = core.patch_node_status("gpu-1", {"status": {"conditions": [vigil_condition("False", "gpu.ecc")]}})
    assert types(node) == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "VigilHealthy"]

    # a second condition type is added next to the first, which stays
    node = core.patch_node_status("gpu-1", {"status": {"conditions": [
        {"type": "VigilRdma", "status": "True", "reason": "Ok"}]}})
    assert types(node)[-2:] == ["VigilHealthy", "VigilRdma"]

    # patching by type replaces that entry's fields only; Ready is untouched
    node = core.patch_node_status("gpu-1", {"status": {"conditions": [vigil_condition("True", "Healthy", "ok")]}})
    vigil = [c for c in node.status.conditions if c.type == "VigilHealthy"]
    assert len(vigil) == 1 and (vigil[0].status, vigil[0].reason, vigil[0].message) == ("True", "Healthy", "ok")
    ready = [c for c in node.status.conditions if c.type == "Ready"][0]
    assert (ready.status, ready.reason) == ("True", "KubeletReady")

    # "$patch: delete" removes one entry by its merge key
    node = core.patch_node_status("gpu-1", {"status": {"conditions": [{"type": "VigilHealthy", "$patch": "delete"}]}})
    assert "VigilHealthy" not in types(node) and "VigilRdma" in types(node) and "Ready" in types(node)
    assert types(core.read_node("gpu-1")) == types(node)


def test_json_merge_patch_replaces_the_conditions_list(kube, core):
    kube.add_node("gpu-1")
    node = core.patch_node_status("gpu-1", {"status": {"conditions": [vigil_condition("False", "gpu.ecc")]}},
                                  _content_type="application/merge-patch+json")
    assert types(node) == ["VigilHealthy"]


def test_strategic_merge_patch_of_taints_replaces_the_whole_list(kube, core):
    """The documented trap: spec.taints has no merge key."""
    kube.add_node("gpu-1", taints=[HUMAN_TAINT])
    node = core.patch_node("gpu-1", {"spec": {"taints": [VIGIL_TAINT]}})
    assert [t.key for t in node.spec.taints] == ["vigil.dev/unhealthy"]
    assert [t.key for t in core.read_node("gpu-1").spec.taints] == ["vigil.dev/unhealthy"]


def test_read_modify_write_of_taints_with_resource_version(kube, core):
    kube.add_node("gpu-1", taints=[HUMAN_TAINT])
    node = core.read_node("gpu-1")
    stale = core.read_node("gpu-1")
    node.spec.taints.append(client.V1Taint(**VIGIL_TAINT))
    updated = core.replace_node("gpu-1", node)
    assert [t.key for t in updated.spec.taints] == ["team.example/reserved", "vigil.dev/unhealthy"]
    assert int(updated.metadata.resource_version) > int(node.metadata.resource_version)

    stale.spec.unschedulable = True
    with pytest.raises(ApiException) as exc:
        core.replace_node("gpu-1", stale)
    body = status_of(exc)
    assert exc.value.status == 409
    assert body["kind"] == "Status" and body["reason"] == "Conflict" and body["code"] == 409
    assert body["details"] == {"name": "gpu-1", "kind": "nodes"}
    assert "the object has been modified" in body["message"]
    assert core.read_node("gpu-1").spec.unschedulable is None

    fresh = core.read_node("gpu-1")
    fresh.spec.unschedulable = True
    done = core.replace_node("gpu-1", fresh)
    assert done.spec.unschedulable is True and len(done.spec.taints) == 2


def test_injected_conflicts_are_retried_to_success(kube, core):
    kube.add_node("gpu-1")
    kube.inject_conflicts("nodes", "gpu-1", times=2)
    attempts = 0
    while True:
        attempts += 1
        node = core.read_node("gpu-1")
        node.spec.unschedulable = True
        try:
            core.replace_node("gpu-1", node)
            break
        except ApiException as exc:
            assert exc.status == 409
            assert attempts < 10
    assert attempts == 3
    assert len(kube.requests("PUT", r"^/api/v1/nodes/gpu-1$")) == 3
    assert [r.status for r in kube.requests("PUT")] == [409, 409, 200]

    # a patch without a resourceVersion does not care about a concurrent write
    kube.inject_conflicts("nodes", "gpu-1", times=1)
    node = core.patch_node("gpu-1", {"metadata": {"annotations": {"vigil.dev/v1.note": "x"}}})
    assert node.metadata.annotations["vigil.dev/v1.note"] == "x"


def test_resource_version_in_a_patch_is_a_precondition(kube, core):
    rv = kube.add_node("gpu-1")["metadata"]["resourceVersion"]
    kube.bump("nodes", "gpu-1")
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"metadata": {"resourceVersion": rv}, "spec": {"unschedulable": True}})
    assert exc.value.status == 409 and status_of(exc)["reason"] == "Conflict"
    assert core.read_node("gpu-1").spec.unschedulable is None

    current = core.read_node("gpu-1").metadata.resource_version
    node = core.patch_node("gpu-1", {"metadata": {"resourceVersion": current}, "spec": {"unschedulable": True}})
    assert node.spec.unschedulable is True

    # JSON patch: a failed "test" is 422 and applies nothing
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                                  {"op": "replace", "path": "/spec/unschedulable", "value": False}])
    assert exc.value.status == 422
    node = core.patch_node("gpu-1", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": node.metadata.resource_version},
        {"op": "add", "path": "/spec/taints", "value": [VIGIL_TAINT]},
        {"op": "remove", "path": "/spec/unschedulable"}])
    assert [t.key for t in node.spec.taints] == ["vigil.dev/unhealthy"] and node.spec.unschedulable is None


def test_resource_version_is_a_cluster_wide_counter_and_noops_do_not_move_it(kube, core):
    kube.add_node("gpu-1")
    kube.add_node("gpu-2")
    rv0 = int(kube.resource_version)
    first = core.patch_node("gpu-1", {"spec": {"unschedulable": True}})
    second = core.patch_node("gpu-2", {"spec": {"unschedulable": True}})
    assert (int(first.metadata.resource_version), int(second.metadata.resource_version)) == (rv0 + 1, rv0 + 2)
    again = core.patch_node("gpu-1", {"spec": {"unschedulable": True}})
    assert again.metadata.resource_version == first.metadata.resource_version
    assert core.list_node().metadata.resource_version == str(rv0 + 2)


def test_status_subresource_is_kept_apart_from_spec(kube, core):
    kube.add_node("gpu-1")
    before = core.read_node("gpu-1")

    # status in a PATCH or PUT of the node itself is ignored
    node = core.patch_node("gpu-1", {"status": {"conditions": [vigil_condition("False", "gpu.ecc")]}})
    assert "VigilHealthy" not in types(node)
    assert node.metadata.resource_version == before.metadata.resource_version  # nothing changed: no write
    node = core.read_node("gpu-1")
    node.status.conditions.append(client.V1NodeCondition(type="VigilHealthy", status="False", reason="x"))
    node.spec.unschedulable = True
    node = core.replace_node("gpu-1", node)
    assert node.spec.unschedulable is True and "VigilHealthy" not in types(node)

    # spec in a PATCH or PUT of nodes/{name}/status is ignored
    node = core.patch_node_status("gpu-1", {"spec": {"unschedulable": False, "taints": [VIGIL_TAINT]},
                                            "status": {"conditions": [vigil_condition("False", "gpu.ecc")]}})
    assert node.spec.unschedulable is True and node.spec.taints is None and "VigilHealthy" in types(node)
    node = core.read_node_status("gpu-1")
    node.spec.taints = [client.V1Taint(**VIGIL_TAINT)]
    node.status.conditions = [c for c in node.status.conditions if c.type != "VigilHealthy"]
    node = core.replace_node_status("gpu-1", node)
    assert node.spec.taints is None and "VigilHealthy" not in types(node)

    # as on the real server (only spec is reset), metadata in a status write is applied
    node = core.patch_node_status("gpu-1", {"metadata": {"annotations": {"vigil.dev/v1.via-status": "yes"}}})
    assert node.metadata.annotations["vigil.dev/v1.via-status"] == "yes"


def test_annotations_and_labels_merge_and_null_deletes(kube, core):
    kube.add_node("gpu-1", annotations={"human.example/note": "rack 4"})
    node = core.patch_node("gpu-1", {"metadata": {"annotations": {"vigil.dev/v1.cordoned": "true"},
                                                  "labels": {"vigil.dev/state": "unhealthy"}}})
    assert node.metadata.annotations == {"human.example/note": "rack 4", "vigil.dev/v1.cordoned": "true"}
    assert node.metadata.labels["vigil.dev/state"] == "unhealthy"
    assert node.metadata.labels["kubernetes.io/hostname"] == "gpu-1"

    node = core.patch_node("gpu-1", {"metadata": {"annotations": {"vigil.dev/v1.cordoned": None}}})
    assert node.metadata.annotations == {"human.example/note": "rack 4"}
    # an emptied map disappears from the JSON, so the client sees None (omitempty), as from a real server
    node = core.patch_node("gpu-1", {"metadata": {"annotations": {"human.example/note": None}}})
    assert node.metadata.annotations is None

    node = core.patch_node("gpu-1", {"spec": {"unschedulable": True, "taints": [VIGIL_TAINT]}})
    node = core.patch_node("gpu-1", {"spec": {"unschedulable": False, "taints": []}})
    assert node.spec.unschedulable is None and node.spec.taints is None


def test_validation_and_not_found_are_status_objects(kube, core):
    kube.add_node("gpu-1")
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"spec": {"taints": [{"key": "vigil.dev/unhealthy", "effect": "NoScheduling"}]}})
    body = status_of(exc)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.taints[0].effect"
    assert body["details"]["causes"][0]["reason"] == "FieldValueNotSupported"

    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"spec": {"taints": [VIGIL_TAINT, dict(VIGIL_TAINT, value="again")]}})
    assert exc.value.status == 422 and status_of(exc)["details"]["causes"][0]["reason"] == "FieldValueDuplicate"

    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"metadata": {"labels": {"vigil.dev/state": "not ok!"}}})
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"metadata": {"annotations": {"vigil dev/bad key": "x"}}})
    assert exc.value.status == 422

    with pytest.raises(ApiException) as exc:
        core.read_node("gpu-9")
    body = status_of(exc)
    assert exc.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'nodes "gpu-9" not found' and body["details"] == {"name": "gpu-9", "kind": "nodes"}
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-9", {"spec": {"unschedulable": True}})
    assert exc.value.status == 404

    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"spec": {"unschedulable": "yes"}})
    assert exc.value.status == 400 and status_of(exc)["reason"] == "BadRequest"


def test_unknown_fields_are_dropped_with_a_warning_or_rejected_when_strict(kube, core):
    kube.add_node("gpu-1")
    data, code, headers = core.patch_node_with_http_info("gpu-1", {"spec": {"unschedulabel": True}})
    assert code == 200 and data.spec.unschedulable is None
    assert 'unknown field \\"spec.unschedulabel\\"' in headers.get("Warning", "")
    with pytest.raises(ApiException) as exc:
        core.patch_node("gpu-1", {"spec": {"unschedulabel": True}}, field_validation="Strict")
    assert exc.value.status == 400 and "strict decoding error" in status_of(exc)["message"]


def test_list_with_selectors_and_pagination(kube, core):
    kube.add_node("gpu-1", labels={"nvidia.com/gpu.present": "true"})
    kube.add_node("gpu-2", labels={"nvidia.com/gpu.present": "true"}, unschedulable=True)
    kube.add_node("cpu-1")
    kube.add_pod("vigil", "vigil-agent-a", node_name="gpu-1")
    kube.add_pod("vigil", "vigil-agent-b", node_name="gpu-2")

    names = lambda lst: [i.metadata.name for i in lst.items]  # noqa: E731
    assert names(core.list_node()) == ["cpu-1", "gpu-1", "gpu-2"]
    assert core.list_node().items[0].kind is None  # list items carry no kind, as from a real server
    assert names(core.list_node(label_selector="nvidia.com/gpu.present=true")) == ["gpu-1", "gpu-2"]
    assert names(core.list_node(label_selector="!nvidia.com/gpu.present")) == ["cpu-1"]
    assert names(core.list_node(label_selector="kubernetes.io/hostname in (cpu-1,gpu-2)")) == ["cpu-1", "gpu-2"]
    assert names(core.list_node(field_selector="spec.unschedulable=true")) == ["gpu-2"]
    assert names(core.list_node(field_selector="metadata.name!=gpu-1")) == ["cpu-1", "gpu-2"]
    assert names(core.list_namespaced_pod("vigil", field_selector="spec.nodeName=gpu-2")) == ["vigil-agent-b"]
    assert names(core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-1")) == ["vigil-agent-a"]
    with pytest.raises(ApiException) as exc:
        core.list_node(field_selector="spec.providerID=x")
    assert exc.value.status == 400

    page = core.list_node(limit=2)
    assert names(page) == ["cpu-1", "gpu-1"] and page.metadata._continue
    rest = core.list_node(limit=2, _continue=page.metadata._continue)
    assert names(rest) == ["gpu-2"] and not rest.metadata._continue


def test_watch_sees_the_cordon(kube, core):
    kube.add_node("gpu-1")

    def cordon():
        time.sleep(0.3)
        core.patch_node("gpu-1", {"spec": {"unschedulable": True}})

    threading.Thread(target=cordon, daemon=True).start()
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_node, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name, event["object"].spec.unschedulable))
        if event["type"] == "MODIFIED":
            w.stop()
    assert seen == [("ADDED", "gpu-1", None), ("MODIFIED", "gpu-1", True)]


def test_watch_resumes_from_a_resource_version_and_410_after_compaction(kube, core):
    node = kube.add_node("gpu-1")
    rv = node["metadata"]["resourceVersion"]
    core.patch_node("gpu-1", {"spec": {"unschedulable": True}})
    core.patch_node("gpu-1", {"metadata": {"labels": {"x": "y"}}})
    resp = core.list_node(watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in resp.data.decode().splitlines() if line.strip()]
    assert [e["type"] for e in lines] == ["MODIFIED", "MODIFIED"]
    assert lines[-1]["object"]["metadata"]["labels"]["x"] == "y"

    kube.compact()
    resp = core.list_node(watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in resp.data.decode().splitlines() if line.strip()]
    assert lines[0]["type"] == "ERROR" and lines[0]["object"]["code"] == 410


def test_create_and_delete_nodes_through_the_api(kube, core):
    created = core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="gpu-9")))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    with pytest.raises(ApiException) as exc:
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="gpu-9")))
    assert exc.value.status == 409 and status_of(exc)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="GPU_9")))
    assert exc.value.status == 422
    status = core.delete_node("gpu-9")  # the client types this response as a plain object
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"]["name"] == "gpu-9" and status["details"]["uid"] == created.metadata.uid
    with pytest.raises(ApiException) as exc:
        core.read_node("gpu-9")
    assert exc.value.status == 404
