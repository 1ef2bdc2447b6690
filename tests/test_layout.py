"""The rooms' import rules (pyproject.toml [tool.importlinter], CONTRIBUTING.md "Layout") hold, checked by
import-linter itself; and a change that breaks one fails, shown on a copy of the tree with a bad import."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    p = lint(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


@pytest.fixture
def tree(tmp_path):
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize("where,line,contract", [
    ("agent/base/roots.py", "from agent.sources.gpu import model", "Layers"),
    ("agent/aggregator/state.py", "from agent.stream import spool", "The aggregator imports no node-side code"),
    ("agent/sources/rdma/rules.py", "from agent.sources.netflow import policy", "Sources are independent"),
])
def test_a_broken_rule_fails_and_names_its_contract(tree, where, line, contract):
    f = tree / where
    f.write_text(f.read_text() + f"\n{line}  # noqa\n")
    p = lint(tree)
    assert p.returncode != 0
    broken = [ln for ln in p.stdout.splitlines() if " BROKEN" in ln]
    assert any(ln.startswith(contract) for ln in broken), p.stdout
