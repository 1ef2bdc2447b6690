"""docs/configuration.md is generated from the Settings dataclasses (scripts/gen-config-doc.py) and cannot drift:
it is regenerated in memory and compared; a key added to a Settings dataclass appears with the range its check()
enforces; and every bound the table states is the one the real loader enforces."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys

import pytest

from agent.base.config import CollectorSettings, ConfigError, from_mapping, in_range
from agent.run.loop import collector_schemas
from tests.support import ROOT

spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "scripts" / "gen-config-doc.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_configuration_md_is_up_to_date():
    assert (ROOT / "docs" / "configuration.md").read_text() == gen.render(), \
        "docs/configuration.md is out of date: run PYTHONPATH=. .venv/bin/python scripts/gen-config-doc.py"


def test_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "OUT", tmp_path / "configuration.md")
    (tmp_path / "configuration.md").write_text("stale\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def test_a_new_key_appears_with_its_meaning_and_range():
    @dataclasses.dataclass
    class NewSettings(CollectorSettings):
        widgets_max: int = 7  # widgets a node may have before it is judged
        mode: str = "calm"

        def check(self, prefix: str) -> None:
            in_range(f"{prefix}.widgets_max", self.widgets_max, 1, 64)

    text = gen.render({"widget": NewSettings})
    row = next(line for line in text.splitlines() if line.startswith("| `widget.widgets_max`"))
    assert "`7`" in row and "1..64" in row and "widgets a node may have before it is judged" in row
    assert "| `widget.interval_seconds` |" in text and "| `widget.mode` | string |" in text


def test_every_key_of_every_section_is_documented():
    text = gen.render()
    schemas = {"agent": None, "stream": None, **collector_schemas()}
    for section, cls in collector_schemas().items():
        for f in dataclasses.fields(cls):
            nested_section = dataclasses.is_dataclass(f.default_factory()) if callable(f.default_factory) else False
            row = f"| `{section}.{f.name}." if nested_section else f"| `{section}.{f.name}` |"
            assert row in text, f"{section}.{f.name}"
    assert all(f"## `{s}`" in text for s in schemas)


def rows_with_bounds():
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        m = re.match(r"\| `([a-z_.]+)` \| (integer|number)(?: or null)? \| [^|]* \| [^|]*within ([0-9.]+)\.\.([0-9.]+)",
                     line)
        if m:
            yield m.group(1), m.group(2), float(m.group(3)), float(m.group(4))


def nested(key: str, value):
    out: dict = {}
    parts = key.split(".")
    d = out
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
    return out


@pytest.mark.parametrize("key, kind, lo, hi", list(rows_with_bounds()))
def test_documented_bounds_are_enforced(key, kind, lo, hi):
    schemas = collector_schemas()
    cast = int if kind == "integer" else float
    try:
        from_mapping(nested(key, cast(hi)), schemas)  # the bound itself is accepted
    except ConfigError as e:  # ... unless a relation to another key refuses it: satisfy that one too
        m = re.search(r"must be at (?:most|least) ([a-z_.]+)", str(e))
        assert m, str(e)
        both = nested(key, cast(hi))
        both_section = nested(m.group(1), cast(hi))
        for k, v in both_section.items():
            both.setdefault(k, {}).update(v) if isinstance(v, dict) else both.update({k: v})
        from_mapping(both, schemas)
    with pytest.raises(ConfigError, match=re.escape(key)):
        from_mapping(nested(key, cast(hi * 2 + 1)), schemas)


def test_script_check_exits_0_on_the_committed_file():
    p = subprocess.run([sys.executable, "scripts/gen-config-doc.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
