"""The patch formats on their own (strategic-merge directives, RFC 7386, RFC 6902).

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import pytest

from agent.fakekube import patch

NODE = "io.k8s.api.core.v1.Node"
POD = "io.k8s.api.core.v1.Pod"


def cond(t, s="True", **kw):
    return {"type": t, "status": s, **kw}


def test_smp_merge_list_by_key_and_directives():
    original = {"metadata": {"finalizers": ["a", "b", "c"], "labels": {"x": "1", "y": "2"}},
                "status": {"conditions": [cond("Ready"), cond("DiskPressure", "False"), cond("VigilHealthy")]}}
    out = patch.strategic_merge_patch(original, {
        "metadata": {"labels": {"x": None, "z": "3"}, "finalizers": ["d"], "$deleteFromPrimitiveList/finalizers": ["b"]},
        "status": {"conditions": [cond("VigilHealthy", "False", reason="r"), {"type": "DiskPressure", "$patch": "delete"},
                                  cond("New")]},
    }, NODE)
    assert out["metadata"]["labels"] == {"y": "2", "z": "3"}
    assert out["metadata"]["finalizers"] == ["a", "c", "d"]
    assert out["status"]["conditions"] == [cond("Ready"), cond("VigilHealthy", "False", reason="r"), cond("New")]
    assert original["status"]["conditions"][2] == cond("VigilHealthy")  # input untouched


def test_smp_replace_directives_and_atomic_lists():
    original = {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
                "status": {"conditions": [cond("Ready"), cond("X")], "capacity": {"cpu": "4", "memory": "1Gi"}}}
    out = patch.strategic_merge_patch(original, {
        "spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
        "status": {"conditions": [cond("Only"), {"$patch": "replace"}],
                   "capacity": {"$patch": "replace", "cpu": "8"}}}, NODE)
    assert out["spec"]["taints"] == [{"key": "b", "effect": "NoExecute"}]
    assert out["status"]["conditions"] == [cond("Only")]
    assert out["status"]["capacity"] == {"cpu": "8"}
    out = patch.strategic_merge_patch(original, {"status": {"capacity": {"$patch": "delete"}}}, NODE)
    assert "capacity" not in out["status"]


def test_smp_set_element_order_keeps_server_only_items_in_place():
    original = {"status": {"conditions": [cond("A"), cond("B"), cond("C"), cond("D")]}}
    out = patch.strategic_merge_patch(original, {"status": {
        "$setElementOrder/conditions": [{"type": "C"}, {"type": "A"}],
        "conditions": [cond("C", "False")]}}, NODE)
    # listed items take the listed order; B and D (not listed) keep their place relative to the live list
    assert [c["type"] for c in out["status"]["conditions"]] == ["B", "C", "A", "D"]
    assert out["status"]["conditions"][1]["status"] == "False"


def test_smp_retain_keys_and_errors():
    original = {"spec": {"volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}]}}
    out = patch.strategic_merge_patch(original, {"spec": {"volumes": [
        {"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/y"}}]}}, POD)
    assert out["spec"]["volumes"] == [{"name": "v", "hostPath": {"path": "/y"}}]
    with pytest.raises(patch.PatchInternalError):
        patch.strategic_merge_patch({"status": {"conditions": []}}, {"status": {"conditions": [{"status": "x"}]}}, NODE)
    with pytest.raises(patch.PatchError):
        patch.strategic_merge_patch({}, {"metadata": {"$patch": "bogus"}}, NODE)


def test_json_merge_patch_rfc7386():
    assert patch.json_merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == \
        {"a": "z", "c": {"d": "e"}}
    assert patch.json_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert patch.json_merge_patch({"a": "foo"}, None) is None
    assert patch.json_merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}


def test_json_patch_rfc6902():
    doc = {"foo": ["bar", "baz"], "a": {"b": 1}, "k~/": 2}
    out = patch.json_patch(doc, [
        {"op": "add", "path": "/foo/1", "value": "qux"},
        {"op": "add", "path": "/foo/-", "value": "end"},
        {"op": "remove", "path": "/a/b"},
        {"op": "replace", "path": "/k~0~1", "value": 3},
        {"op": "copy", "from": "/foo/0", "path": "/c"},
        {"op": "move", "from": "/c", "path": "/a/m"},
        {"op": "test", "path": "/a/m", "value": "bar"},
    ])
    assert out == {"foo": ["bar", "qux", "baz", "end"], "a": {"m": "bar"}, "k~/": 3}
    with pytest.raises(patch.PatchApplyError):
        patch.json_patch(doc, [{"op": "test", "path": "/a/b", "value": 2}])
    with pytest.raises(patch.PatchApplyError):
        patch.json_patch(doc, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(patch.PatchApplyError):
        patch.json_patch(doc, [{"op": "replace", "path": "/nope", "value": 1}])
