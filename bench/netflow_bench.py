"""Netflow benchmark: what the eBPF TCP flow probe costs the traffic it watches, and what it costs itself.

    sudo .venv/bin/python bench/netflow_bench.py [--rounds 10] [--seconds 3] [--conn-seconds 30]

Root, on loopback only (apt's iperf3). Results are printed and written to bench/results/netflow.json.

1. Throughput: iperf3 over loopback, 1 KB and 128 KB writes, client and server pinned to one core each, in
   alternating rounds with the probe off and on (loaded and attached, read by the agent's collector every
   second, ten times its default rate); medians and the on/off ratio.
2. Connection churn: about 10,000 new connections per second (four client and two server processes; each
   client rotates over 100 source addresses in 127.0.0.0/8 so that TIME_WAIT never runs out of ports), each
   connection sending 100 bytes and reading 100. The probe process's CPU (psutil, its own user + system time)
   while the collector reads at the default 10 s interval and at 1 s; the agent side's CPU per read (ledger,
   JSON); and the kernel-side cost of the BPF programs: their run time per connection from the kernel's BPF
   statistics, and the load generator's CPU per connection with the probe off and on (alternating rounds).
Targets (issue 5): <= 2% throughput loss at 1 KB writes, within noise at 128 KB; probe CPU < 2% of one core
at 10,000 new connections per second.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.base.collector import Context
from agent.sources.netflow.collector import NetflowCollector, NetflowSettings
from agent.base.config import Expectations
from agent.base.roots import Roots
from benchlib import free_port  # noqa: E402 (bench/ is the script's own directory)

IP_BIND_ADDRESS_NO_PORT = 24


class Probe:
    """The agent's netflow collector with its probe process, read by a thread every `interval` seconds."""

    def __init__(self, interval: float) -> None:
        ctx = Context(roots=Roots(), node="bench", expect=Expectations())
        self.collector = NetflowCollector(NetflowSettings(timeout_seconds=30.0), ctx)
        self.interval = interval
        self.read_cpu: list[float] = []  # agent-side CPU seconds per read (this thread)
        self.read_wall: list[float] = []
        self._stop = threading.Event()
        self._first()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _first(self) -> None:
        r = self.collector.read()
        if r.state != "ok":
            raise SystemExit(f"netflow probe not running: {r.reason}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            c0, w0 = time.thread_time(), time.monotonic()
            r = self.collector.read()
            self.read_cpu.append(time.thread_time() - c0)
            self.read_wall.append(time.monotonic() - w0)
            if r.state != "ok":
                print(f"  probe read: {r.state} {r.reason}", file=sys.stderr)

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.collector.client.pid)

    def opens(self) -> float:
        snap = self.collector.ledger.snapshot()
        return sum(snap.opens.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.collector.close()


# -- 1. throughput -----------------------------------------------------------------------------------------------
def iperf(port: int, length: str, seconds: float) -> tuple[float, float]:
    """(bits per second received, CPU seconds per GB moved: iperf3's own client + server CPU accounting)."""
    p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-l", length, "-A", "0,1",
                        "-J"], capture_output=True, text=True, timeout=seconds + 30, check=False)
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-500:] + p.stderr[-500:])
    end = json.loads(p.stdout)["end"]
    cpu = end["cpu_utilization_percent"]
    moved_gb = end["sum_received"]["bytes"] / 1e9
    cpu_s = (cpu["host_total"] + cpu["remote_total"]) / 100 * end["sum_received"]["seconds"]
    return end["sum_received"]["bits_per_second"], cpu_s / moved_gb


def throughput(rounds: int, seconds: float) -> dict:
    """Alternating rounds; with the probe on, the kernel's BPF statistics count the programs' runs during the
    transfer (connection set-up and teardown only: nothing runs per packet)."""
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    time.sleep(0.5)
    out: dict = {}
    try:
        for length in ("1K", "128K"):
            runs: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            bpf_runs = []
            for r in range(rounds):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    probe = Probe(1.0) if mode == "on" else None
                    try:
                        before = bpf_run_time(probe.collector.client.pid) if probe else (0, 0)
                        bps, cpu_per_gb = iperf(port, length, seconds)
                        if probe:
                            bpf_runs.append(bpf_run_time(probe.collector.client.pid)[1] - before[1])
                    finally:
                        if probe:
                            probe.stop()
                    runs[mode].append(bps)
                    cpu[mode].append(cpu_per_gb)
                    print(f"  {length:>4} writes, probe {mode:>3}: {bps / 1e9:6.2f} Gbit/s, {cpu_per_gb:6.3f} CPU s/GB",
                          flush=True)
            off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
            c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
            out[length] = {"off_gbps": [round(x / 1e9, 3) for x in runs["off"]],
                           "on_gbps": [round(x / 1e9, 3) for x in runs["on"]],
                           "median_off_gbps": round(off / 1e9, 3), "median_on_gbps": round(on / 1e9, 3),
                           "ratio_on_off": round(on / off, 4),
                           "cpu_s_per_gb_off": [round(x, 4) for x in cpu["off"]],
                           "cpu_s_per_gb_on": [round(x, 4) for x in cpu["on"]],
                           "median_cpu_s_per_gb_off": round(c_off, 4), "median_cpu_s_per_gb_on": round(c_on, 4),
                           "cpu_ratio_on_off": round(c_on / c_off, 4),
                           "bpf_runs_per_transfer": bpf_runs}
    finally:
        knob.write_text(old)
        server.terminate()
        server.wait()
    return out


# -- 2. connection churn ---------------------------------------------------------------------------------------
def _server(sock: socket.socket, stop) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = sock.accept()
        except TimeoutError:
            continue
        with c:
            c.recv(100)
            c.sendall(b"s" * 100)


def _client(port: int, rate: float, seconds: float, first: int, count, stop) -> None:
    """Open connections at `rate` per second for `seconds`: connect, send 100 bytes, read 100, close."""
    payload = b"c" * 100
    addrs = [f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}" for i in range(100)]
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        now = time.monotonic() - start
        if now >= seconds:
            break
        if n > now * rate:
            time.sleep(0.001)
            continue
        s = socket.socket()
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((addrs[n % len(addrs)], 0))
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(payload)
            s.recv(100)
        except OSError:
            pass
        finally:
            s.close()
        n += 1
    with count.get_lock():
        count.value += n


def churn(rate: float, seconds: float, clients: int = 4, servers: int = 2) -> tuple[float, float, int]:
    """Run the churn load; (connections per second achieved, load generator CPU seconds per connection,
    connections made)."""
    port = free_port()
    socks = []
    for _ in range(servers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(4096)
        socks.append(s)
    stop = mp.Event()
    count = mp.Value("l", 0)
    procs = [mp.Process(target=_server, args=(s, stop)) for s in socks]
    procs += [mp.Process(target=_client, args=(port, rate / clients, seconds, 100 * i, count, stop))
              for i in range(clients)]
    for p in procs:
        p.start()
    ps = [psutil.Process(p.pid) for p in procs]
    t0 = time.monotonic()
    cpu0 = {p.pid: sum(p.cpu_times()[:2]) for p in ps}
    cpu1 = dict(cpu0)
    while any(p.is_alive() for p in procs[servers:]):
        for p in ps:
            try:
                cpu1[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        time.sleep(0.2)
    wall = time.monotonic() - t0
    stop.set()
    for p in procs:
        p.join(5)
    for s in socks:
        s.close()
    n = count.value
    return n / wall, sum(cpu1[pid] - cpu0[pid] for pid in cpu0) / max(1, n), n


def probe_cpu(rate: float, seconds: float, interval: float) -> dict:
    """The probe process's CPU over a churn window (reads land at the interval within it), and whether every
    connection was counted (two opens each: the client's egress, the server's ingress)."""
    probe = Probe(interval)
    try:
        proc = probe.process
        opens0 = probe.opens()
        t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
        achieved, _, made = churn(rate, seconds)
        wall, cpu = time.monotonic() - t0, sum(proc.cpu_times()[:2]) - c0
        rss = proc.memory_info().rss
        time.sleep(interval + 1)  # the next read counts the window's last connections
        seen = probe.opens() - opens0
        return {"interval_s": interval, "connections_per_s": round(achieved), "window_s": round(wall, 1),
                "probe_cpu_percent_of_core": round(100 * cpu / wall, 3), "probe_cpu_seconds": round(cpu, 3),
                "probe_rss_mb": round(rss / 1e6, 1), "agent_rss_mb": round(psutil.Process().memory_info().rss / 1e6, 1),
                "reads": len(probe.read_cpu),
                "agent_cpu_ms_per_read": round(1e3 * statistics.median(probe.read_cpu), 3) if probe.read_cpu else None,
                "read_wall_ms_median": round(1e3 * statistics.median(probe.read_wall), 2) if probe.read_wall else None,
                "connections_made": made, "opens_counted": int(seen)}
    finally:
        probe.stop()


def fdinfo_run_time(text: str) -> tuple[int, int] | None:
    """(run_time_ns, run_cnt) of a BPF program's fdinfo (kernel.bpf_stats_enabled); None: no program's."""
    if "prog_type:" not in text:
        return None
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


def bpf_run_time(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs process `pid` holds."""
    ns = cnt = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            got = fdinfo_run_time(Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
        except OSError:
            continue
        if got is not None:
            ns, cnt = ns + got[0], cnt + got[1]
    return ns, cnt


# The peer measured in the same run: the least a sock_ops flow probe can run, a program that only turns on the
# state callback (as any probe that sees closes must) and returns. The kernel calls it as often as Vigil's.
FLOOR_PROGRAM = r"""
int floor_ops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}
"""


class Floor:
    """FLOOR_PROGRAM loaded by this process and linked to the cgroup v2 root, as the probe links its own."""

    def __init__(self) -> None:
        from bcc import BPF
        from agent.sources.netflow.probe import cgroup2_mount, link_sock_ops

        self.bpf = BPF(text=FLOOR_PROGRAM)
        self.link = link_sock_ops(self.bpf.load_func("floor_ops", BPF.SOCK_OPS).fd, cgroup2_mount())

    def close(self) -> None:
        os.close(self.link)
        self.bpf.cleanup()


def bpf_cost(rate: float, seconds: float, rounds: int = 4) -> dict:
    """Time spent inside the BPF programs per connection, from the kernel's own accounting (turned on for the
    measurement and restored; it adds two clock reads per run, so this slightly overstates): Vigil's probe and
    the floor program in alternating rounds under the same churn; medians, and Vigil's over the floor's."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    rows: dict[str, list[dict]] = {"vigil": [], "floor": []}
    try:
        for r in range(rounds):
            for mode in (("vigil", "floor") if r % 2 == 0 else ("floor", "vigil")):
                probe = Probe(10.0) if mode == "vigil" else None
                floor = Floor() if mode == "floor" else None
                pid = probe.collector.client.pid if probe else os.getpid()
                try:
                    ns0, cnt0 = bpf_run_time(pid)
                    achieved, _, made = churn(rate, seconds)
                    ns1, cnt1 = bpf_run_time(pid)
                finally:
                    if probe:
                        probe.stop()
                    if floor:
                        floor.close()
                row = {"connections": made, "connections_per_s": round(achieved),
                       "ns_per_connection": round((ns1 - ns0) / max(1, made)),
                       "runs_per_connection": round((cnt1 - cnt0) / max(1, made), 1),
                       "ns_per_run": round((ns1 - ns0) / max(1, cnt1 - cnt0)),
                       "cpu_percent_of_core": round(100 * (ns1 - ns0) / 1e9 / seconds, 2)}
                rows[mode].append(row)
                print(f"  {mode:>5}: {row['ns_per_connection']} ns per connection ({row['runs_per_connection']} "
                      f"runs, {row['ns_per_run']} ns each) at {row['connections_per_s']} conn/s", flush=True)
    finally:
        knob.write_text(old)
    med = {m: statistics.median(x["ns_per_connection"] for x in rows[m]) for m in rows}
    v = rows["vigil"]
    return {"rounds": rows, "bpf_ns_per_connection": round(med["vigil"]),
            "floor_ns_per_connection": round(med["floor"]),
            "ratio_vigil_floor": round(med["vigil"] / max(1, med["floor"]), 2),
            "vigil_work_ns_per_connection": round(med["vigil"] - med["floor"]),
            "bpf_runs_per_connection": statistics.median(x["runs_per_connection"] for x in v),
            "bpf_ns_per_run": round(statistics.median(x["ns_per_run"] for x in v)),
            "connections_per_s": round(statistics.median(x["connections_per_s"] for x in v)),
            "bpf_cpu_percent_of_core_at_rate": statistics.median(x["cpu_percent_of_core"] for x in v)}


# Where the program's time goes: copies of it attached together, each doing one group of callbacks' work and
# returning at once on the others (so each also pays the trivial runs: compare with "other").
SPLIT_GROUPS = {
    "connect": "op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_TCP_LISTEN_CB",
    "established": "op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB",
    "close": "op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == S_CLOSE",
    "fin_wait2": "op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == S_FIN_WAIT2",
}


def bpf_split(rate: float, seconds: float) -> dict:
    from bcc import BPF
    from agent.sources.netflow.probe import BPF_SOURCE, cgroup2_mount, link_sock_ops, load_policy

    entry = "int tcpflow_ops(struct bpf_sock_ops *skops) {"
    src = BPF_SOURCE.read_text().replace(entry, "static __always_inline " + entry)
    groups = dict(SPLIT_GROUPS, other="!(" + " || ".join(f"({c})" for c in SPLIT_GROUPS.values()) + ")")
    for name, cond in groups.items():
        src += (f"\nint split_{name}(struct bpf_sock_ops *skops) {{ u32 op = skops->op; if (!({cond})) return 1; "
                "return tcpflow_ops(skops); }\n")
    bpf = BPF(text=src)
    load_policy(bpf, NetflowSettings().policy([]))  # the default peer classes, as the probe loads them
    fds, links = {}, []
    try:
        for name in groups:
            fn = bpf.load_func(f"split_{name}", BPF.SOCK_OPS)
            links.append(link_sock_ops(fn.fd, cgroup2_mount()))  # a refusal raises: no copy left unmeasured
            fds[name] = fn.fd
    except BaseException:
        for link in links:
            os.close(link)
        bpf.cleanup()
        raise

    def stat(fd: int) -> tuple[int, int]:
        return fdinfo_run_time(Path(f"/proc/self/fdinfo/{fd}").read_text()) or (0, 0)

    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    try:
        before = {n: stat(fd) for n, fd in fds.items()}
        _, _, made = churn(rate, seconds)
        after = {n: stat(fd) for n, fd in fds.items()}
    finally:
        knob.write_text(old)
        for link in links:
            os.close(link)
        bpf.cleanup()
    out = {n: round((after[n][0] - before[n][0]) / max(1, made)) for n in groups}
    trivial = out["other"]
    for n in groups:
        extra = f" (about {out[n] - trivial} ns over the trivial runs)" if n != "other" else " (the trivial runs)"
        print(f"  {n:>12}: {out[n]} ns per connection{extra}", flush=True)
    return {"ns_per_connection": out, "connections": made}


def kernel_cost(rate: float, seconds: float, rounds: int) -> dict:
    runs: dict[str, list[float]] = {"off": [], "on": []}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            probe = Probe(10.0) if mode == "on" else None
            try:
                achieved, per_conn, _ = churn(rate, seconds)
            finally:
                if probe:
                    probe.stop()
            runs[mode].append(per_conn)
            rates[mode].append(achieved)
            print(f"  churn, probe {mode:>3}: {achieved:7.0f} conn/s, load generator "
                  f"{per_conn * 1e6:6.1f} us CPU per connection", flush=True)
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return {"cpu_us_per_conn_off": [round(x * 1e6, 2) for x in runs["off"]],
            "cpu_us_per_conn_on": [round(x * 1e6, 2) for x in runs["on"]],
            "median_off_us": round(off * 1e6, 2), "median_on_us": round(on * 1e6, 2),
            "median_added_us_per_conn": round((on - off) * 1e6, 2),
            "conn_per_s_off": [round(x) for x in rates["off"]], "conn_per_s_on": [round(x) for x in rates["on"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="alternating off/on rounds per measurement")
    ap.add_argument("--seconds", type=float, default=3, help="iperf3 run length")
    ap.add_argument("--rate", type=float, default=10_000, help="new connections per second to aim for")
    ap.add_argument("--conn-seconds", type=float, default=30, help="churn window per probe CPU measurement")
    ap.add_argument("--skip-iperf", action="store_true")
    ap.add_argument("--only", choices=("iperf", "probe", "bpf", "split", "kernel"),
                    help="run one part (bpf: the in-kernel cost per connection against the floor program; split: "
                    "that cost per group of callbacks, not run by default)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("netflow_bench: needs root (BPF)", file=sys.stderr)
        return 1
    results: dict = {"cpus": os.cpu_count(), "kernel": os.uname().release, "args": vars(args)}

    def part(name: str) -> bool:
        return args.only == name or (args.only is None and not (name == "iperf" and args.skip_iperf))

    if shutil.which("iperf3") is None and part("iperf"):
        print("netflow_bench: iperf3 missing (apt-get install iperf3)", file=sys.stderr)
        return 1
    if part("iperf"):
        print("throughput (iperf3, loopback):", flush=True)
        results["iperf3"] = throughput(args.rounds, args.seconds)
    if part("probe"):
        print("probe CPU under connection churn:", flush=True)
        results["probe_cpu"] = [probe_cpu(args.rate, args.conn_seconds, interval) for interval in (10.0, 1.0)]
        for row in results["probe_cpu"]:
            print(f"  reads every {row['interval_s']:g}s: {row['connections_per_s']} conn/s, probe "
                  f"{row['probe_cpu_percent_of_core']}% of a core, agent {row['agent_cpu_ms_per_read']} ms CPU per "
                  "read", flush=True)
    if part("bpf"):
        print("kernel-side cost per connection (Vigil's probe and the floor program, alternating):", flush=True)
        b = results["bpf"] = bpf_cost(args.rate, 10, max(2, min(args.rounds, 6)))
        print(f"  inside the BPF programs: Vigil {b['bpf_ns_per_connection']} ns per connection "
              f"({b['bpf_runs_per_connection']} runs), floor {b['floor_ns_per_connection']} ns: "
              f"{b['ratio_vigil_floor']}x the floor, {b['vigil_work_ns_per_connection']} ns of Vigil's own work; "
              f"{b['bpf_cpu_percent_of_core_at_rate']}% of a core at {b['connections_per_s']} conn/s", flush=True)
    if args.only == "split":
        print("in-kernel cost per group of callbacks (copies of the program attached together):", flush=True)
        results["split"] = bpf_split(args.rate, 10)
    if part("kernel"):
        results["kernel"] = kernel_cost(args.rate, min(args.conn_seconds, 10), args.rounds)
    out = ROOT / "bench" / "results" / "netflow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
