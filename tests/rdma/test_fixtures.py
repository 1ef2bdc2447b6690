"""The RDMA fixture nodes: the ttar reader that unpacks the real captures, and the derivation script that
builds fixtures/nodes/rdma-*/ from them (checked byte for byte when the captures are at hand)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from .helpers import FIXTURES, RDMA_NODES, ROOT


def _load_ttar():
    """fixtures/tools/ttar.py is a standalone tool, not a package: load it from its file."""
    spec = importlib.util.spec_from_file_location("ttar", ROOT / "fixtures" / "tools" / "ttar.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ttar"] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ttar = _load_ttar()

SHARED = ROOT.parent / "shared" / "fixtures" / "rdma"

ARCHIVE = """Directory: sys/class/infiniband/mlx4_0
Mode: 755
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/infiniband/mlx4_0/ports/2/link_layer
Lines: 2
InfiniBand

Mode: 644
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/infiniband/mlx5_0/node_guid
Lines: 1
0a7f:bc12:45ef:d23bEOF
Mode: 644
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: proc/1/cmdline
Lines: 1
initNULLBYTE--debugNULLBYTEEOF
Mode: 644
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: sys/class/infiniband/mlx5_0/device
SymlinkTo: ../../../devices/pci0000:00/0000:00:02.0
# ttar - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Path: empty
Lines: 0
Mode: 644
"""


def test_ttar_reader(tmp_path):
    archive = tmp_path / "a.ttar"
    archive.write_text(ARCHIVE)
    written = ttar.unpack(archive, tmp_path / "out")
    out = tmp_path / "out"
    assert len(written) == 4
    assert (out / "sys/class/infiniband/mlx4_0/ports/2/link_layer").read_bytes() == b"InfiniBand\n\n"
    assert (out / "sys/class/infiniband/mlx5_0/node_guid").read_bytes() == b"0a7f:bc12:45ef:d23b"
    assert (out / "proc/1/cmdline").read_bytes() == b"init\0--debug\0"
    assert (out / "empty").read_bytes() == b""
    assert (out / "sys/class/infiniband/mlx5_0/device").is_symlink()


def test_ttar_reader_rejects_a_short_file(tmp_path):
    (tmp_path / "bad.ttar").write_text("Path: x\nLines: 3\none\n")
    with pytest.raises(ttar.TtarError):
        ttar.unpack(tmp_path / "bad.ttar", tmp_path / "out")


@pytest.mark.parametrize("node", RDMA_NODES)
def test_every_rdma_fixture_says_where_it_comes_from(node):
    d = FIXTURES / node
    readme = (d / "README.md").read_text()
    assert "../shared/fixtures/rdma/" in readme and "derive_rdma.py" in readme
    assert json.loads((d / "node.json").read_text())["expect"]["rdma_ports"] > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real captures are not at {SHARED}")
def test_fixtures_are_what_the_derivation_script_builds():
    p = subprocess.run([sys.executable, str(FIXTURES / "derive_rdma.py"), "--check", "--source", str(SHARED)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real captures are not at {SHARED}")
def test_verbatim_trees_match_the_unpacked_archives(tmp_path):
    ttar.unpack(SHARED / "node_exporter_fixtures_infiniband_only.ttar", tmp_path / "ne")
    src = tmp_path / "ne" / "sys" / "class" / "infiniband"
    dst = FIXTURES / "rdma-quirks" / "sys" / "class" / "infiniband"
    files = [p.relative_to(src) for p in src.rglob("*") if p.is_file()]
    assert len(files) == 75
    for rel in files:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
