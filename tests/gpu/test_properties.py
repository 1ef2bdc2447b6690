"""Property tests of the GPU parsers (issue 12, item 4): amd-smi JSON, amdsmi return values, nvidia-smi XML.

Inputs are the real fixtures (fixtures/nodes: amd-smi JSON of MI300X nodes on ROCm 6.2 and 7.1, nvidia-smi
XML of an H100; the amdsmi library fake built on the documented return shapes) with a few fields broken.
Properties: the parser never raises; every value it returns is possible (the validator's ranges; impossible
ones are listed in GpuReading.invalid); and a broken field of one GPU leaves every other GPU's reading as it
was. Bounded by tests.support.mutate.FAST; bench/fuzz_parsers.py runs many more examples.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from agent.base import validate as valid
from agent.sources.gpu.amd_smi_cli import decode_json, parse_outputs
from agent.sources.gpu.amdsmi_lib import AmdSmiLibBackend
from agent.sources.gpu.model import GpuReading, _SCALARS
from agent.sources.gpu.nvidia_smi_xml import parse_xml
from tests.gpu.fake_amdsmi import FakeAmdSmi, mi300x
from tests.support import FIXTURES
from tests.support.mutate import FAST, WEIRD_JSON, XML_TEXT, apply, get, json_changes

# Keys whose change moves a reading to another GPU or re-labels the node's partitions: not one GPU's field.
NODE_WIDE = {"gpu", "partition_id", "partition", "accelerator_partition", "compute_partition"}


def assert_possible(g: GpuReading) -> None:
    """Nothing impossible leaves a parser: each field None or within the validator's range."""
    assert isinstance(g.index, int) and 0 <= g.index <= valid.INDEX_MAX
    for attr, _key, _name, ok in _SCALARS:
        v = getattr(g, attr)
        assert v is None or ok(v), (attr, v)
    assert all(valid.temperature(t) for t in g.temperatures.values()), g.temperatures
    assert all(valid.temperature(t) for t in g.temperature_limits.values()), g.temperature_limits
    assert all(valid.counter(e.count) for e in g.ecc), g.ecc
    assert all(link.errors is None or valid.counter(link.errors) for link in g.links)
    for text in (g.model, g.serial, g.uuid, g.pci_bus_id, g.driver, g.partition, *g.firmware.values()):
        assert text is None or isinstance(text, str)
    assert g.name.encode("utf-8")  # the gpu label: plain text


def comparable(g: GpuReading) -> dict:
    d = dataclasses.asdict(g)
    d.pop("partition")  # node-wide: one GPU's partition id decides whether the node counts as split
    return d


# -- amd-smi JSON ---------------------------------------------------------------------------------------
AMD_NODES = ("mi300x-rocm71-healthy", "mi300x-rocm62-healthy", "mi300x-faulty", "mi300a-apu-na")
AMD = {n: {p.stem: json.loads(p.read_text()) for p in (FIXTURES / n / "amd-smi").glob("*.json")} for n in AMD_NODES}
AMD_BASE = {n: {g.index: comparable(g) for g in parse_outputs(o)[0]} for n, o in AMD.items()}


def owner(doc: dict, path: tuple) -> int | None:
    """The GPU index of the per-GPU entry a path runs through; None outside any entry or on a node-wide key."""
    node: object = doc
    found = None
    for key in path:
        if isinstance(node, dict) and "gpu" in node and found is None:
            found = node["gpu"]
        if key in NODE_WIDE:
            return None
        node = node[key]  # type: ignore[index]
    return found if isinstance(found, int) else None


amd_samples = st.sampled_from(AMD_NODES).flatmap(
    lambda n: st.tuples(st.just(n), json_changes(AMD[n], allowed=lambda p: len(p) > 1)))


def check_amd_json(sample) -> None:
    node, changes = sample
    outputs = apply(AMD[node], changes)
    readings, errors = parse_outputs(outputs)
    assert all(isinstance(e, str) for e in errors)
    for g in readings:
        assert_possible(g)
    touched = {owner(AMD[node], c.path) for c in changes}
    if None in touched:
        return
    for g in readings:
        if g.index not in touched and g.index in AMD_BASE[node]:
            assert comparable(g) == AMD_BASE[node][g.index], f"gpu{g.index} changed by a change to {touched}"


@FAST
@given(amd_samples)
def test_amd_smi_json_never_raises_and_one_gpu_costs_one_gpu(sample):
    check_amd_json(sample)


def check_amd_text(sample) -> None:
    """decode_json on what the CLI prints: garbage, truncation, and nesting far past the decoder's depth."""
    prefix, depth, tail = sample
    text = prefix + "[" * depth + tail
    try:
        doc = decode_json(text)
    except ValueError:  # documented: no JSON in the output (that command is reported, the others read)
        return
    parse_outputs({"metric": doc})


amd_texts = st.tuples(st.sampled_from(["", "WARNING: banner\n", '{"gpu_data": ']),
                      st.sampled_from([0, 1, 999, 100_000]), st.sampled_from(["", "]" * 5, '{"gpu": 0}]', "x"]))


@FAST
@given(amd_texts)
def test_amd_smi_text_never_raises(sample):
    check_amd_text(sample)


# -- amdsmi library return values ------------------------------------------------------------------------
def _fake_values() -> list[dict]:
    return [copy.deepcopy(mi300x(slot).values) for slot in range(2)]


LIB_BASE = _fake_values()
LIB_GETTERS = sorted(LIB_BASE[0])
lib_samples = st.tuples(st.integers(0, 1), st.sampled_from(LIB_GETTERS), WEIRD_JSON, st.data())


def _lib_readings(values: list[dict]) -> list[GpuReading]:
    gpus = [mi300x(slot) for slot in range(2)]
    for g, v in zip(gpus, values):
        g.values = v
    return AmdSmiLibBackend(FakeAmdSmi(gpus)).read().gpus


LIB_READINGS = [comparable(g) for g in _lib_readings(_fake_values())]


def check_amdsmi(sample) -> None:
    slot, getter, value, data = sample
    values = _fake_values()
    target = values[slot][getter]
    if isinstance(target, (dict, list)) and target and data.draw(st.booleans()):
        keys = list(target.keys()) if isinstance(target, dict) else list(range(len(target)))
        target[data.draw(st.sampled_from(keys))] = value  # one field of the returned dict or list
    else:
        values[slot][getter] = value  # the whole return value
    readings = _lib_readings(values)
    for g in readings:
        assert_possible(g)
    if getter not in ("amdsmi_get_gpu_kfd_info", "amdsmi_get_gpu_compute_partition"):
        other = 1 - slot
        assert comparable(readings[other]) == LIB_READINGS[other]


@FAST
@given(lib_samples)
def test_amdsmi_return_values_never_raise(sample):
    check_amdsmi(sample)


# -- nvidia-smi XML ---------------------------------------------------------------------------------------
def _two_gpus(path) -> str:
    """A fixture's document with its GPU twice (minor numbers 0 and 1): the files hold one GPU each."""
    root = ET.fromstring(path.read_text())
    first = root.find("gpu")
    second = copy.deepcopy(first)
    second.set("id", "00000000:00:07.0")
    first.find("minor_number").text = "0"
    second.find("minor_number").text = "1"
    second.find("pci/pci_bus_id").text = "00000000:00:07.0"
    root.insert(list(root).index(first) + 1, second)
    return ET.tostring(root, encoding="unicode")


XML_NODES = ("h100-nvidia", "a100-v12", "t4-pcie-x8", "h100-row-remap-pending")
XML = {n: _two_gpus(FIXTURES / n / "nvidia-smi" / "q.xml") for n in XML_NODES}
XML_BASE = {n: [comparable(g) for g in parse_xml(t)] for n, t in XML.items()}
NUMERIC = re.compile(r"\s*-?[0-9]")


def _leaves(root: ET.Element) -> list[ET.Element]:
    """The first GPU's numeric fields (temperatures, counts, widths, sizes): where a number can be impossible."""
    return [e for e in root.find("gpu").iter() if len(e) == 0 and NUMERIC.match(e.text or "")
            and e.tag not in ("minor_number", "gpu_instance_id")]  # these name the GPU: node-wide


XML_LEAVES = {n: len(_leaves(ET.fromstring(t))) for n, t in XML.items()}
xml_samples = st.sampled_from(XML_NODES).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, XML_LEAVES[n] - 1), XML_TEXT), min_size=1, max_size=4)))


def check_nvidia_xml(sample) -> None:
    node, changes = sample
    root = ET.fromstring(XML[node])
    leaves = _leaves(root)
    for i, text in changes:
        leaves[i].text = text
    readings = parse_xml(ET.tostring(root, encoding="unicode"))
    for g in readings:
        assert_possible(g)
    whole = [g for g in readings if not g.partition]
    assert len(whole) == 2
    assert comparable(whole[1]) == next(b for b in XML_BASE[node] if b["index"] == 1)


@FAST
@given(xml_samples)
def test_nvidia_xml_never_raises_and_one_gpu_costs_one_gpu(sample):
    check_nvidia_xml(sample)


def test_nvidia_xml_400_digit_minor_number_keeps_the_gpu():
    text = XML["h100-nvidia"].replace("<minor_number>0</minor_number>", f"<minor_number>{'9' * 400}</minor_number>")
    readings = parse_xml(text)
    assert [g.index for g in readings if not g.partition] == [0, 1]  # the position stands in for the index


def test_amd_gpu_index_superscript_costs_that_entry_only():
    outputs = copy.deepcopy(AMD["mi300x-rocm71-healthy"])
    metric = outputs["metric"]["gpu_data"]
    metric[3]["gpu"] = "²"
    readings, _ = parse_outputs(outputs)
    assert len(readings) == 8
    assert readings[3].temperatures == {} and readings[4].temperatures  # gpu3 lost its metric entry only


def test_amd_401_digit_power_is_invalid_not_a_crash():
    outputs = copy.deepcopy(AMD["mi300x-rocm71-healthy"])
    get(outputs, ("metric", "gpu_data", 0, "power"))["socket_power"] = {"value": 10**401, "unit": "W"}
    readings, _ = parse_outputs(outputs)
    assert readings[0].power_watts is None and readings[1].power_watts is not None
    assert [i.field for i in readings[0].invalid] == ["power"]


TARGETS = {
    "amd-smi JSON": (amd_samples, check_amd_json),
    "amd-smi text": (amd_texts, check_amd_text),
    "amdsmi return values": (lib_samples, check_amdsmi),
    "nvidia-smi XML": (xml_samples, check_nvidia_xml),
}
