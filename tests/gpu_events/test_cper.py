"""`amd-smi ras --cper` output, in every shape amd-smi has printed (sources in agent/sources/gpu_events/cper.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from agent.sources.gpu_events import cper

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "amd-smi"
DOCS = SHARED / "amdsmi-docs-rocm7.1_ras_cper_examples.txt"
METRICSMAP = SHARED / "device-metrics-exporter_metricsmap_amd-smi-cli_mi325x-vf.md"
CHANGELOG = SHARED / "changelog_output_snippets_by_rocm_version.md"


def _docs_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.DOTALL)


def test_docs_table_with_folder_lists_eight_fatal_records_with_afids():
    """ROCm 7.1 docs: `amd-smi ras --cper --severity all --folder /tmp/cper_dump/` on an 8-GPU node."""
    stdout = _docs_blocks()[0].split("\n", 1)[1]
    records, problems = cper.parse(stdout)
    assert problems == []
    assert [r.gpu for r in records] == list(range(8))
    assert {r.severity for r in records} == {"fatal"}
    assert all(r.afids == (30,) and r.timestamp == "2000/06/27 10:45:13" for r in records)
    assert [r.file for r in records] == [f"fatal-{i}.cper" for i in range(1, 9)]


def test_docs_table_joined_with_the_dumped_header_json():
    """The docs' `--gpu 1 --json` example: the table row plus the fatal-1.json header the folder holds."""
    block = _docs_blocks()[2]
    table = "\n".join(block.splitlines()[1:3])
    header = block[block.index("{"): block.rindex("}") + 1]
    assert json.loads(header)["record_id"] == "f0000031"
    (r,), problems = cper.parse(table, {"fatal-1.json": header})
    assert problems == []
    assert (r.gpu, r.severity, r.notify_type, r.record_id, r.creator_id) == (1, "fatal", "MCE", "f0000031",
                                                                             "136c692517001839")
    assert r.afids == (30,) and r.fingerprint == "f0000031|2000/06/27 10:45:13"
    # the docs' clock was not set: a 2000 date is no date
    assert r.epoch is None


def test_mi325x_table_without_folder():
    """device-metrics-exporter's MI325X VF capture: the warning line, then timestamp/gpu_id/severity only."""
    text = METRICSMAP.read_text()
    block = text[text.index("$ sudo amd-smi ras --cper"):]
    block = block[: block.index("```")]
    records, _ = cper.parse(block)
    assert [(r.gpu, r.severity, r.timestamp) for r in records] == [
        (0, "fatal", "2025/10/07 09:58:04"), (0, "fatal", "2025/10/09 05:09:13")]
    assert records[0].record_id is None
    assert len({r.fingerprint for r in records}) == 2
    assert records[0].epoch == 1759831084.0  # 2025-10-07T09:58:04Z


def test_rocm_641_header_dump():
    """ROCm 6.4.1 printed the headers: 'Dumping CPER file header entries for GPU 0:' then "0": {...}."""
    text = CHANGELOG.read_text()
    block = text[text.index("Dumping CPER file header entries"):]
    block = block[: block.index("```")]
    (r,), problems = cper.parse(block)
    assert problems == []
    assert (r.gpu, r.severity, r.notify_type, r.record_id, r.creator_id) == (0, "non_fatal_corrected", "CMC",
                                                                             "5:1", "amdgpu")


def test_boot_records_and_identical_rows_stay_distinct():
    table = ("timestamp            gpu_id  severity\n"
             "2026/05/27 09:12:40  0       BOOT\n"
             "2026/05/27 09:12:40  0       NONFATAL-CORRECTED\n"
             "2026/05/27 09:12:40  0       NONFATAL-CORRECTED\n")
    records, _ = cper.parse(table)
    assert records[0].boot and records[0].severity == "fatal"
    assert [r.ordinal for r in records] == [0, 0, 1]
    assert len({r.fingerprint for r in records}) == 3


def test_whole_json_document_and_garbage():
    doc = json.dumps([{"gpu": 2, "cper": {"0": {"error_severity": "non_fatal_uncorrected", "record_id": "0:7",
                                                "timestamp": "2026/01/02 03:04:05", "notify_type": "CMC"}}}])
    (r,), _ = cper.parse(doc)
    assert (r.gpu, r.severity, r.record_id) == (2, "non_fatal_uncorrected", "0:7")
    assert cper.parse("Error accessing CPER files. This command requires CPER to be enabled.") == ([], [])
    records, problems = cper.parse("2026/05/27 17:59:09  1  FATAL  fatal-2.cper  19\n", {"fatal-2.json": "{bad"})
    assert records[0].severity == "fatal" and problems and "fatal-2.json" in problems[0]
