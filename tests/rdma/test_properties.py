"""Property tests of the RDMA sysfs parser (issue 12, item 4), on copies of the real sysfs trees in
fixtures/nodes (rdma-8port-healthy: mlx5 from prometheus/procfs; rdma-quirks: a real mlx4 with counters_ext
and "N/A (no PMA)" files) with attribute files rewritten and port directories renamed as a broken driver or
a bad snapshot could leave them. Properties: discovery and reads never raise, every value read is possible
(a counter within 64 bits, a state number small), and the ports a change did not touch read as before."""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.base.validate import COUNTER_MAX
from agent.sources.rdma.sysfs import discover, parse_counter, parse_rate, parse_state, read_device
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_TEXT

TREES = {n: FIXTURES / n / "sys" for n in ("rdma-8port-healthy", "rdma-quirks")}
FILES = {n: sorted(str(p.relative_to(t)) for p in t.rglob("*") if p.is_file() and "/ports/" in str(p))
         for n, t in TREES.items()}


def read_all(sys_root: Path) -> dict:
    layout = discover(sys_root / "class" / "infiniband")
    out = {}
    for d in layout.devices:
        dev = read_device(d)
        for p in dev.ports if dev else []:
            out[p.key] = dataclasses.asdict(p)
    return out


BASE = {n: read_all(t) for n, t in TREES.items()}


def port_of(rel: str) -> str:
    parts = rel.split("/")  # class/infiniband/<dev>/ports/<n>/...
    return f"{parts[2]}/{parts[4]}"


@st.composite
def sysfs_samples(draw):
    node = draw(st.sampled_from(sorted(TREES)))
    edits = draw(st.lists(st.tuples(st.sampled_from(FILES[node]), WEIRD_TEXT), min_size=1, max_size=3))
    # a directory name is at most 255 bytes
    rename = draw(st.one_of(st.none(), st.sampled_from(["²", "٣", "9" * 200, "-1", "0x1", "1 "])))
    return node, edits, rename


_COPIES: dict[str, Path] = {}


def _copy(node: str) -> Path:
    """One copy of each tree for the whole run; every example puts back what it changed."""
    if node not in _COPIES:
        root = Path(tempfile.mkdtemp(prefix="vigil-rdma-props-")) / "sys"
        shutil.copytree(TREES[node], root)
        _COPIES[node] = root
    return _COPIES[node]


def check_sysfs(sample) -> None:
    node, edits, rename = sample
    root = _copy(node)
    saved = {rel: (root / rel).read_bytes() for rel, _ in edits}
    touched, renamed = set(), None
    try:
        for rel, text in edits:
            (root / rel).write_bytes(text.encode("utf-8", "surrogatepass"))
            touched.add(port_of(rel))
        if rename is not None:
            first = sorted((root / "class" / "infiniband").iterdir())[0]
            victim = sorted((first / "ports").iterdir())[0]
            renamed = (victim, victim.rename(first / "ports" / rename))
            touched.add(f"{first.name}/{victim.name}")
        got = read_all(root)
    finally:
        if renamed is not None:
            renamed[1].rename(renamed[0])
        for rel, data in saved.items():
            (root / rel).write_bytes(data)
    for key, port in got.items():
        assert 0 <= port["port"] <= 65535
        for group in ("counters", "counters_ext", "hw_counters", "hw_gauges"):
            assert all(0 <= v <= COUNTER_MAX for v in port[group].values())
        if key not in touched:
            assert port == BASE[node][key], key
    assert set(BASE[node]) - touched <= set(got)


@FAST
@given(sysfs_samples())
def test_sysfs_never_raises_and_one_port_costs_one_port(sample):
    check_sysfs(sample)


def check_values(text) -> None:
    n = parse_counter(text)
    assert n is None or 0 <= n <= COUNTER_MAX
    state, name = parse_state(text)
    assert state is None or 0 <= state <= 65535
    rate = parse_rate(text)
    assert rate is None or math.isfinite(rate)


@FAST
@given(st.one_of(WEIRD_TEXT, st.builds(lambda a, b: f"{a}: {b}", WEIRD_TEXT, WEIRD_TEXT)))
def test_attribute_values_never_raise(text):
    check_values(text)


def test_superscript_state_and_port_directory_cost_that_port_only(tmp_path):
    root = tmp_path / "sys"
    shutil.copytree(TREES["rdma-8port-healthy"], root)
    (root / "class/infiniband/mlx5_0/ports/1/state").write_text("²: ACTIVE\n")
    (root / "class/infiniband/mlx5_1/ports/1").rename(root / "class/infiniband/mlx5_1/ports/²")
    got = read_all(root)
    assert got["mlx5_0/1"]["state_id"] is None and got["mlx5_0/1"]["counters"]  # the port is still read
    assert "mlx5_1/1" not in got and got["mlx5_2/1"] == BASE["rdma-8port-healthy"]["mlx5_2/1"]


TARGETS = {
    "RDMA sysfs tree": (sysfs_samples(), check_sysfs),
    "RDMA attribute values": (st.one_of(WEIRD_TEXT, st.builds(lambda a, b: f"{a}: {b}", WEIRD_TEXT, WEIRD_TEXT)),
                              check_values),
}
