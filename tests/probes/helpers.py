"""Fake tool binaries (real executables replaying published outputs) and settings pointing at a temp state dir."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from agent.probes.settings import ProbeSettings
from tests.support import ROOT

PROBE_FIXTURES = ROOT / "fixtures" / "probes"


def fake_tool(bindir: Path, name: str, body: str) -> Path:
    """An executable shell script `name` in `bindir` running `body`."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def replay(bindir: Path, name: str, fixture: Path, exit_code: int = 0, args_log: Path | None = None) -> Path:
    """A fake tool that prints a published output and exits with the tool's status for it."""
    log = f'echo "$@" >> "{args_log}"\n' if args_log else ""
    return fake_tool(bindir, name, f'{log}cat "{fixture}"\nexit {exit_code}')


def settings(tmp: Path, **adapters) -> ProbeSettings:
    s = ProbeSettings(state_dir=str(tmp / "state"), podresources_socket=str(tmp / "no-kubelet.sock"),
                      containerd_socket=str(tmp / "no-containerd.sock"))
    for name, kw in adapters.items():
        for k, v in kw.items():
            setattr(getattr(s, name), k, v)
    return s


def agent(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m agent.cli ARGS` in a child process, as an operator runs it."""
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT)
