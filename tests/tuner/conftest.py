"""Fixtures of the tuner tests (helpers live in helpers.py beside this file: `from .helpers import ...`)."""
from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from .helpers import HOST_NET_KEYS, read_procfs


# -- network namespaces ------------------------------------------------------------------------------------
@pytest.fixture
def netns():
    """A network namespace of our own, deleted afterwards even when the test fails."""
    name = f"vigil-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def host_net_untouched():
    """Every netns test must leave the host's own values as they were."""
    before = {k: read_procfs(Path("/proc"), k) for k in HOST_NET_KEYS}
    yield before
    after = {k: read_procfs(Path("/proc"), k) for k in HOST_NET_KEYS}
    assert after == before, "a namespaced test changed the host's sysctls"
