"""The examples at the end of `agent --help` and `vigil-aggregator --help` (real processes): there are two or three
each, and every one is a command line the real parser accepts, so an example cannot outlive a renamed flag."""
from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from tests.support import ROOT


def examples(module: str) -> list[list[str]]:
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    block = p.stdout.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    out = []
    for line in block.splitlines():
        # An example line is the command, then (after a run of spaces) what it does, or that alone.
        cmd = line.strip().split("    ", 1)[0]
        if cmd.startswith(("agent ", "vigil-aggregator ")):
            out.append(shlex.split(cmd)[1:])
    return out


@pytest.mark.parametrize("module", ["agent.cli", "agent.aggregator.cli"])
def test_help_shows_examples_the_parser_accepts(module):
    found = examples(module)
    assert 2 <= len(found) <= 3, found
    if module == "agent.cli":
        from agent.cli import parser
        for argv in found:
            parser().parse_args(argv)
    else:
        from agent.aggregator.cli import _with_command, parser
        for argv in found:
            p = parser()
            args = p.parse_args(_with_command(p, argv))
            assert args.command == argv[0]


def test_the_first_agent_example_does_what_it_says():
    argv = examples("agent.cli")[0]
    p = subprocess.run([sys.executable, "-m", "agent.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "UNHEALTHY" in p.stdout, p.stdout + p.stderr
