"""The real kubectl against the fake: get, cordon, taint, annotate, create --validate=false.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

HUMAN_TAINT = {"key": "team.example/reserved", "value": "ml", "effect": "NoSchedule"}


@pytest.fixture
def run(kube, kubectl, tmp_path):
    def kubectl_run(*args: str) -> str:
        cmd = [kubectl, "--server", kube.url, "--token", kube.admin_token, "--cache-dir", str(tmp_path / "cache"),
               *args]
        env = dict(os.environ, KUBECONFIG=str(tmp_path / "no-kubeconfig"), HOME=str(tmp_path))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
        return proc.stdout

    return kubectl_run


def test_kubectl_get_cordon_taint_annotate(kube, core, run, tmp_path):
    kube.add_node("gpu-1", taints=[HUMAN_TAINT])
    kube.add_node("gpu-2")

    listed = json.loads(run("get", "nodes", "-o", "json"))
    assert [i["metadata"]["name"] for i in listed["items"]] == ["gpu-1", "gpu-2"]

    kube.clear_requests()
    assert "cordoned" in run("cordon", "gpu-1")
    patches = kube.requests("PATCH", r"^/api/v1/nodes/gpu-1$")
    assert len(patches) == 1 and patches[0].content_type == "application/strategic-merge-patch+json"
    assert patches[0].json == {"spec": {"unschedulable": True}}
    assert core.read_node("gpu-1").spec.unschedulable is True

    run("taint", "nodes", "gpu-1", "vigil.dev/unhealthy=:NoSchedule")
    # kubectl sends the whole list it computed from what it read: the human's taint survives
    assert sorted(t.key for t in core.read_node("gpu-1").spec.taints) == ["team.example/reserved",
                                                                          "vigil.dev/unhealthy"]
    taint_patch = kube.requests("PATCH")[-1]
    assert taint_patch.content_type == "application/strategic-merge-patch+json"
    assert len(taint_patch.json["spec"]["taints"]) == 2

    run("annotate", "node", "gpu-1", "vigil.dev/v1.cordoned=true")
    assert kube.requests("PATCH")[-1].content_type == "application/merge-patch+json"
    assert core.read_node("gpu-1").metadata.annotations == {"vigil.dev/v1.cordoned": "true"}

    table = run("get", "nodes")
    assert "Ready,SchedulingDisabled" in table.splitlines()[1] and table.splitlines()[2].split()[1] == "Ready"

    run("uncordon", "gpu-1")
    run("taint", "nodes", "gpu-1", "vigil.dev/unhealthy:NoSchedule-")
    run("annotate", "node", "gpu-1", "vigil.dev/v1.cordoned-")
    node = core.read_node("gpu-1")
    assert node.spec.unschedulable is None and [t.key for t in node.spec.taints] == ["team.example/reserved"]
    assert node.metadata.annotations is None

    status_patch = json.dumps({"status": {"conditions": [{"type": "VigilHealthy", "status": "False",
                                                          "reason": "gpu.ecc.uncorrectable"}]}})
    run("patch", "node", "gpu-2", "--subresource=status", "-p", status_patch)
    out = json.loads(run("get", "node", "gpu-2", "-o", "json"))
    assert [c["type"] for c in out["status"]["conditions"]][-2:] == ["Ready", "VigilHealthy"]


def test_kubectl_create_with_validate_false(kube, run, tmp_path):
    manifest = tmp_path / "lease.json"
    manifest.write_text(json.dumps({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "metadata": {"name": "vigil-aggregator", "namespace": "vigil"},
                                    "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15}}))
    assert "created" in run("create", "--validate=false", "-f", str(manifest))
    assert "replica-a" in run("get", "leases", "-n", "vigil")
    assert kube.get("leases", "vigil-aggregator", "vigil")["spec"]["leaseDurationSeconds"] == 15
