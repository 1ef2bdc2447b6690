"""Concurrent writers: optimistic concurrency holds, patches never lose each other's changes.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import threading

from kubernetes import client
from kubernetes.client.rest import ApiException

THREADS, ROUNDS = 8, 20


def test_read_modify_write_with_retries_loses_no_increment(kube):
    kube.add_node("gpu-1", annotations={"counter": "0"})
    conflicts = []

    def worker():
        api = client.CoreV1Api(kube.api_client())
        for _ in range(ROUNDS):
            while True:
                node = api.read_node("gpu-1")
                node.metadata.annotations["counter"] = str(int(node.metadata.annotations["counter"]) + 1)
                try:
                    api.replace_node("gpu-1", node)
                    break
                except ApiException as exc:
                    assert exc.status == 409
                    conflicts.append(1)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kube.get("nodes", "gpu-1")["metadata"]["annotations"]["counter"] == str(THREADS * ROUNDS)
    assert len(kube.requests("PUT", status=200)) == THREADS * ROUNDS
    assert len(kube.requests("PUT", status=409)) == len(conflicts)


def test_concurrent_condition_patches_by_type_all_land(kube):
    kube.add_node("gpu-1")

    def worker(i):
        api = client.CoreV1Api(kube.api_client())
        for r in range(ROUNDS):
            api.patch_node_status("gpu-1", {"status": {"conditions": [
                {"type": f"Vigil{i}", "status": "True", "reason": f"round{r}"}]}})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conditions = {c["type"]: c for c in kube.get("nodes", "gpu-1")["status"]["conditions"]}
    for i in range(THREADS):
        assert conditions[f"Vigil{i}"]["reason"] == f"round{ROUNDS - 1}"
    assert "Ready" in conditions
