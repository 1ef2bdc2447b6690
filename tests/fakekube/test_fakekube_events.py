"""Events: core/v1 and events.k8s.io/v1 (one store), deterministic names, validation.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

T = dt.datetime(2025, 1, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)


def node_ref(name="gpu-1"):
    return client.V1ObjectReference(kind="Node", name=name, api_version="v1")


def core_event(name: str, namespace: str = "default", **extra) -> client.CoreV1Event:
    return client.CoreV1Event(metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                              involved_object=node_ref(), reason="Cordoned", message="vigil cordoned gpu-1",
                              type="Warning", source=client.V1EventSource(component="vigil-aggregator"),
                              first_timestamp=T, last_timestamp=T, count=1, **extra)


def test_duplicate_event_name_is_409_already_exists(kube, core):
    created = core.create_namespaced_event("default", core_event("gpu-1.vigil.cordon.7f3a"))
    assert created.count == 1 and created.involved_object.name == "gpu-1"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_event("default", core_event("gpu-1.vigil.cordon.7f3a"))
    body = json.loads(exc.value.body)
    assert exc.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "gpu-1.vigil.cordon.7f3a", "kind": "events"}
    listed = core.list_namespaced_event("default", field_selector="involvedObject.kind=Node,involvedObject.name=gpu-1")
    assert [e.metadata.name for e in listed.items] == ["gpu-1.vigil.cordon.7f3a"]
    assert core.list_event_for_all_namespaces(field_selector="reason=Cordoned").items[0].message == "vigil cordoned gpu-1"


def test_event_about_a_node_must_live_in_default_or_kube_system(kube, core):
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_event("vigil", core_event("e1", namespace="vigil"))
    body = json.loads(exc.value.body)
    assert exc.value.status == 422 and body["details"]["causes"][0]["field"] == "involvedObject.namespace"

    new_style = dict(event_time=T, reporting_component="vigil.dev/aggregator", reporting_instance="agg-0",
                     action="Cordon")
    core.create_namespaced_event("kube-system", core_event("e2", namespace="kube-system", **new_style))
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_event("vigil", core_event("e3", namespace="vigil", **new_style))
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:  # eventTime set: reportingComponent etc. become required
        core.create_namespaced_event("default", core_event("e4", event_time=T))
    fields = {c["field"] for c in json.loads(exc.value.body)["details"]["causes"]}
    assert fields == {"reportingComponent", "reportingInstance", "action"}


def test_events_k8s_io_shares_the_store_and_validates_strictly(kube, core, events_api, raw):
    ev = client.EventsV1Event(metadata=client.V1ObjectMeta(name="gpu-1.vigil.cordon.1"), event_time=T,
                              reporting_controller="vigil.dev/aggregator", reporting_instance="agg-0",
                              action="Cordon", reason="Unhealthy", type="Warning", note="gpu3 ECC",
                              regarding=node_ref())
    created = events_api.create_namespaced_event("default", ev)
    assert created.note == "gpu3 ECC" and created.regarding.name == "gpu-1"
    as_core = core.read_namespaced_event("gpu-1.vigil.cordon.1", "default")
    assert (as_core.message, as_core.reporting_component, as_core.involved_object.kind) == \
        ("gpu3 ECC", "vigil.dev/aggregator", "Node")
    with pytest.raises(ApiException) as exc:
        events_api.create_namespaced_event("default", ev)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:  # the same name through the other API is the same object
        core.create_namespaced_event("default", core_event("gpu-1.vigil.cordon.1"))
    assert exc.value.status == 409

    # (the client's own model insists on eventTime, so plain HTTP carries this one to the server)
    missing_time = {"metadata": {"name": "e2"}, "reportingController": "vigil.dev/a",
                    "reportingInstance": "agg-0", "action": "Cordon", "reason": "Unhealthy", "type": "Warning",
                    "regarding": {"kind": "Node", "name": "gpu-1"}}
    code, body = raw("POST", "/apis/events.k8s.io/v1/namespaces/default/events", missing_time)
    assert code == 422 and "eventTime" in {c["field"] for c in body["details"]["causes"]}
    bad_name = client.EventsV1Event(metadata=client.V1ObjectMeta(name="Gpu-1:Cordon"), event_time=T,
                                    reporting_controller="vigil.dev/a", reporting_instance="agg-0", action="Cordon",
                                    reason="Unhealthy", type="Warning", regarding=node_ref())
    with pytest.raises(ApiException) as exc:
        events_api.create_namespaced_event("default", bad_name)
    assert exc.value.status == 422
    assert [e.note for e in events_api.list_namespaced_event("default").items] == ["gpu3 ECC"]


def test_event_series_update_with_resource_version(kube, core):
    created = core.create_namespaced_event("default", core_event("gpu-1.vigil.recover"))
    created.count = 2
    updated = core.replace_namespaced_event("gpu-1.vigil.recover", "default", created)
    assert updated.count == 2
    created.count = 3  # stale resourceVersion
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_event("gpu-1.vigil.recover", "default", created)
    assert exc.value.status == 409
