"""TokenReview (authentication.k8s.io/v1) and bearer-token authentication of API requests.

Against agent.fakekube, the project's faithful fake API server (no real kube-apiserver can be
installed here: see REAL-PARTS.md).
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agent.fakekube import FakeKube

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"


def review(authn, token, audiences=None):
    spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
    return authn.create_token_review(client.V1TokenReview(spec=spec)).status


def agent_token(kube, node="gpu-1", pod="vigil-agent-x7k2p"):
    kube.add_node(node)
    created = kube.add_pod("vigil", pod, node_name=node, service_account="vigil-agent")
    token = kube.issue_service_account_token("vigil", "vigil-agent", pod=pod, audiences=["vigil"])
    return token, created


def test_tokenreview_authenticates_a_pod_bound_token_with_extras(kube, authn):
    token, pod = agent_token(kube)
    status = review(authn, token, ["vigil"])
    assert status.authenticated is True
    assert status.user.username == "system:serviceaccount:vigil:vigil-agent"
    assert "system:serviceaccounts:vigil" in status.user.groups
    assert status.user.extra[POD_NAME] == ["vigil-agent-x7k2p"]
    assert status.user.extra[POD_UID] == [pod["metadata"]["uid"]]
    assert status.user.extra[NODE_NAME] == ["gpu-1"]  # Kubernetes >= 1.30
    assert status.audiences == ["vigil"]


def test_tokenreview_refusals(kube, authn):
    token, _ = agent_token(kube)
    unknown = review(authn, "not-a-token", ["vigil"])
    assert not unknown.authenticated and unknown.user.username is None

    wrong = review(authn, token, ["some-other-service"])
    assert not wrong.authenticated and "invalid for the target audiences" in wrong.error
    # no audiences in the review means the API server's own: a token for "vigil" is not valid there
    assert not review(authn, token).authenticated
    # intersecting is enough
    assert review(authn, token, ["other", "vigil"]).audiences == ["vigil"]

    kube.expire_token(token)
    assert "expired" in review(authn, token, ["vigil"]).error


def test_deleting_the_pod_invalidates_its_token(kube, authn):
    token, _ = agent_token(kube)
    assert review(authn, token, ["vigil"]).authenticated
    kube.delete("pods", "vigil-agent-x7k2p", "vigil")
    status = review(authn, token, ["vigil"])
    assert not status.authenticated and "not found" in status.error


def test_before_1_30_there_is_no_node_name_extra():
    with FakeKube(kube_version="1.29.6") as kube:
        token, _ = agent_token(kube)
        status = review(client.AuthenticationV1Api(kube.api_client()), token, ["vigil"])
        assert status.authenticated and POD_NAME in status.user.extra and NODE_NAME not in status.user.extra


def test_tokenreview_needs_a_token(kube, raw):
    code, body = raw("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                     {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}})
    assert code == 400 and body["reason"] == "BadRequest"


def test_api_requests_with_a_bad_token_are_401(kube):
    kube.add_node("gpu-1")
    bad = client.CoreV1Api(kube.api_client(token="nope"))
    with pytest.raises(ApiException) as exc:
        bad.read_node("gpu-1")
    assert exc.value.status == 401 and json.loads(exc.value.body)["reason"] == "Unauthorized"
    # a token minted for audience "vigil" does not authenticate to the API server
    token, _ = agent_token(kube, node="gpu-2", pod="agent-2")
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(kube.api_client(token=token)).read_node("gpu-1")
    assert exc.value.status == 401
    api_token = kube.issue_service_account_token("vigil", "vigil-aggregator",
                                                 audiences=kube.api_audiences)
    assert client.CoreV1Api(kube.api_client(token=api_token)).read_node("gpu-1").metadata.name == "gpu-1"
    assert kube.requests("GET", "/api/v1/nodes/gpu-1", status=200)[-1].user == \
        "system:serviceaccount:vigil:vigil-aggregator"


def test_require_auth_refuses_anonymous():
    with FakeKube(require_auth=True) as kube:
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(kube.url + "/api/v1/nodes", timeout=5)
        assert exc.value.code == 401
        assert client.CoreV1Api(kube.api_client()).list_node().items == []
