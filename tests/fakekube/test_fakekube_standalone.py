"""``python -m agent.fakekube`` (the demo's server) and TLS.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from kubernetes import client

from agent.fakekube import FakeKube


def test_module_runs_standalone_and_prints_its_url(tmp_path):
    state = tmp_path / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "agent.fakekube", "--port", "0", "--nodes", "3",
                             "--agent-pods", "--state-file", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        info = json.loads(state.read_text())
        cfg = client.Configuration()
        cfg.host = url
        cfg.api_key = {"BearerToken": info["admin_token"]}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        api_client = client.ApiClient(cfg)
        nodes = client.CoreV1Api(api_client).list_node()
        assert [n.metadata.name for n in nodes.items] == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]
        review = client.AuthenticationV1Api(api_client).create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=info["agent_tokens"]["gpu-node-2"], audiences=["vigil"])))
        assert review.status.user.extra["authentication.kubernetes.io/node-name"] == ["gpu-node-2"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_tls_with_a_self_signed_certificate():
    with FakeKube(tls=True) as kube:
        kube.add_node("gpu-1")
        assert kube.url.startswith("https://")
        api = client.CoreV1Api(kube.api_client())
        assert api.read_node("gpu-1").metadata.name == "gpu-1"
