"""proto/ is the one source of truth for the wire: the committed stubs must be what the generator makes."""
import filecmp
import os
import subprocess
import sys

from tests.support import ROOT


def test_generated_stubs_match_the_protos(tmp_path):
    out = tmp_path / "_proto"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    subprocess.run(["bash", "scripts/gen-protos.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
    committed = ROOT / "agent" / "_proto"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    have = sorted(p.relative_to(committed) for p in committed.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts) if committed.exists() else []
    assert fresh == have, "agent/_proto is out of date: run scripts/gen-protos.sh"
    stale = [str(p) for p in fresh if not filecmp.cmp(out / p, committed / p, shallow=False)]
    assert not stale, f"stale generated files: {stale}; run scripts/gen-protos.sh"
