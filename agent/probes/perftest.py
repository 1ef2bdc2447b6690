"""perftest `ib_write_bw` loopback on every active RDMA port: a server and a client on the same port
(localhost), the client's average bandwidth against 85% of the port's own rate (sysfs `rate`).

The report (fixtures/probes/perftest/) ends in a table under a header line
" #bytes  #iterations  BW peak[Gb/sec]  BW average[Gb/sec]  MsgRate[Mpps]" ([MB/sec] without
--report_gbits, which we always pass). A run without that table is unknown; a port that is not ACTIVE is
left to the rdma source (it already reports the port state) and not tested.
"""
from __future__ import annotations

import os
import re

from agent.base import tools
from agent.base.findings import bad, ok
from agent.base.validate import finite

from .floors import rdma_floor_gbps
from .runner import COMPONENT, Parsed, Probe, ProbeContext, Unrunnable

CHECK = "probe.perftest.write_bw_gbps"
BASE_PORT = 18515  # perftest's default TCP port for the exchange; one per tested port from here
_HEADER = re.compile(r"^\s*#bytes\s+#iterations\s+BW peak\[(Gb|MB)/sec\]\s+BW average\[(Gb|MB)/sec\]", re.I)


def active_ports(sysfs: str) -> list[tuple[str, str, str]]:
    """(device, port, rate text) of every ACTIVE port under <sysfs>/class/infiniband."""
    root = os.path.join(sysfs, "class", "infiniband")
    out = []
    try:
        devices = sorted(os.listdir(root))
    except OSError:
        return out
    for dev in devices:
        ports = os.path.join(root, dev, "ports")
        try:
            names = sorted(os.listdir(ports), key=lambda p: (len(p), p))
        except OSError:
            continue
        for port in names:
            try:
                with open(os.path.join(ports, port, "state")) as f:
                    state = f.read(64)
                with open(os.path.join(ports, port, "rate")) as f:
                    rate = f.read(64).strip()
            except (OSError, UnicodeDecodeError):
                continue
            if "ACTIVE" in state and port.isdigit() and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", dev):
                out.append((dev, port, rate))
    return out


class Perftest(Probe):
    name = "perftest"
    tools = ("ib_write_bw",)
    uses_gpus = False
    uses_rdma = True
    what = "ib_write_bw loopback per active port: 5 s each (quick), 20 s (full); the port is saturated"

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        s = ctx.settings.perftest
        ports = active_ports(ctx.sysfs)
        if not ports:
            raise Unrunnable(f"no ACTIVE RDMA port under {ctx.sysfs}/class/infiniband")
        seconds = int(s.duration_seconds * (4 if ctx.level == "full" else 1)) or 1
        runs = []
        for i, (dev, port, _) in enumerate(ports):
            opts = f"-d {dev} -i {port} -s {s.size} -D {seconds} -F --report_gbits -p {BASE_PORT + i}"
            # server in the background (its own report discarded), then the client on the same port; the tool
            # runner kills the whole group at the deadline
            script = f'"$0" {opts} >/dev/null 2>&1 & sleep 1; "$0" {opts} localhost; st=$?; wait; exit $st'
            runs.append((["/bin/sh", "-c", script, binary], {"VIGIL_PROBE_PORT": f"{dev}/{port}"}))
        return runs

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        dev_port = re.search(r"-d (\S+) -i (\d+)", done.command)
        entity = f"{dev_port.group(1)}/{dev_port.group(2)}" if dev_port else "rdma"
        rate = {f"{d}/{p}": r for d, p, r in active_ports(ctx.sysfs)}.get(entity)
        return parse(done.stdout, done.returncode, entity, rate, done.last_line())


def parse(text: str, returncode: int, entity: str, rate: str | None, last_line: str = "") -> Parsed:
    """The client's average bandwidth from ib_write_bw's report. Never raises."""
    lines = text.splitlines()
    value = None
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if not m or i + 1 >= len(lines):
            continue
        f = lines[i + 1].split()
        if len(f) < 4 or not f[0].isdigit():
            continue
        try:
            avg = float(f[3])
        except ValueError:
            continue
        if not finite(avg) or avg < 0:
            continue
        value = avg if m.group(2).lower() == "gb" else avg * 8 * 1.048576 / 1000  # MiB/s -> Gb/s
    if value is None:
        return Parsed(problem=f"{entity}: ib_write_bw printed no bandwidth (exit {returncode}"
                              + (f": {last_line}" if last_line else "") + ")")
    if returncode != 0:
        return Parsed(problem=f"{entity}: ib_write_bw exited {returncode}" + (f": {last_line}" if last_line else ""))
    floor = rdma_floor_gbps(rate)
    if floor is None:
        return Parsed([ok(CHECK, COMPONENT, entity, f"write bandwidth {value:g} Gb/s (port rate unknown: not judged)",
                          severity="info", value=value)], None, f"{entity} {value:g} Gb/s")
    if value < floor.value:
        f = bad(CHECK, COMPONENT, entity, f"write bandwidth {value:g} Gb/s below {floor.value:g} Gb/s ({floor.source})",
                value=value, threshold=floor.value, action="check the port's cable, transceiver and PCIe link")
    else:
        f = ok(CHECK, COMPONENT, entity, f"write bandwidth {value:g} Gb/s (floor {floor.value:g} of {rate})",
               value=value, threshold=floor.value)
    return Parsed([f], None, f"{entity} {value:g} Gb/s")
