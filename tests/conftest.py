import shutil

import pytest

from tests.support import AGENT, FIXTURES, ROOT, is_root  # noqa: F401  (re-exported for older imports)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite fixtures/nodes/*/golden/ from the current code instead of comparing")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.fixture(scope="session")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/install-deps.sh installs Debian's prometheus package")
    return path

