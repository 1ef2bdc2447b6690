"""Shared test constants. Import as `from tests.support import ...`: several rooms have a conftest.py of their own,
so `from conftest import` would pick whichever was imported last."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "nodes"
AGENT = str(Path(sys.executable).parent / "agent")


def is_root() -> bool:
    return os.geteuid() == 0
