"""Scrape benchmark: Vigil's /metrics against Debian's prometheus-node-exporter, scraped in the same run.

    .venv/bin/python bench/scrape_bench.py [--scrapes 2000] [--soak 60]          # about 2 minutes

- Scrape latency: alternating rounds against every exporter over keep-alive HTTP with gzip, as Prometheus
  scrapes; reports p50/p99 per exporter and the ratio to the like-for-like peer. Like with like (issue 15):
  node_exporter with only its infiniband collector (`--collector.disable-defaults --collector.infiniband`) on the
  same fixture sysfs tree (`--path.sysfs`) as Vigil's `--only rdma` on that fixture node: the same files read, the
  same kind of series. Second, labelled as different work: node_exporter with all its default collectors on
  the live host, against Vigil on every fixture node (GPU and RDMA).
- Steady cost: the agent serving a fixture node at its default intervals, scraped every 15 s, for --soak
  seconds; reports CPU (% of one core) and RSS.
Targets (issue 2): scrape p99 no worse than node_exporter's; RSS <= 60 MB; CPU <= 1% of one core.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from benchlib import free_port  # noqa: E402 (bench/ is the script's own directory)

ROOT = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, "-m", "agent.cli"]  # this checkout's agent (not an installed console script)
RDMA_NODE = "rdma-8port-healthy"


def wait_http(port: int, path: str = "/metrics", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not answer")


def scrape_times(port: int, n: int) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        size = len(body)
    conn.close()
    return times, size


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", action="append", default=None,
                    help="fixture node(s) under fixtures/nodes (default: mi300x-rocm71-busy and rdma-8port-healthy)")
    ap.add_argument("--scrapes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--soak", type=float, default=60.0)
    args = ap.parse_args()
    nodes = args.node or [n for n in ("mi300x-rocm71-busy", "rdma-8port-healthy")
                          if (ROOT / "fixtures" / "nodes" / n).is_dir()]
    ne_bin = shutil.which("prometheus-node-exporter")
    if ne_bin is None:
        print("prometheus-node-exporter is missing: run scripts/install-deps.sh", file=sys.stderr)
        return 1

    procs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        targets: dict[str, int] = {}  # row label -> port

        def start(label: str, cmd: list[str]) -> None:
            port = free_port()
            procs.append(subprocess.Popen([c.replace("PORT", str(port)) for c in cmd], cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            targets[label] = port

        rdma_sys = ROOT / "fixtures" / "nodes" / RDMA_NODE / "sys"
        like = (f"node_exporter --collector.infiniband only, {RDMA_NODE}/sys", f"vigil --only rdma, {RDMA_NODE}")
        start(like[0], [ne_bin, "--web.listen-address=127.0.0.1:PORT", "--collector.disable-defaults",
                        "--collector.infiniband", f"--path.sysfs={rdma_sys}"])
        start(like[1], AGENT + ["--snapshot", str(ROOT / "fixtures" / "nodes" / RDMA_NODE), "--only", "rdma",
                                "--listen", "127.0.0.1:PORT", "--log-level", "warning"])
        full = "node_exporter, all default collectors, live host (different work)"
        start(full, [ne_bin, "--web.listen-address=127.0.0.1:PORT"])
        for node in nodes:
            start(f"vigil, every collector, {node} (different work)",
                  AGENT + ["--snapshot", str(ROOT / "fixtures" / "nodes" / node), "--listen", "127.0.0.1:PORT",
                           "--log-level", "warning"])
        for port in targets.values():
            wait_http(port)

        lat: dict[str, list[float]] = {k: [] for k in targets}
        sizes: dict[str, int] = {}
        per_round = max(1, args.scrapes // args.rounds)
        for _ in range(args.rounds):  # alternate, so drift on the machine hits every exporter alike
            for label, port in targets.items():
                t, sizes[label] = scrape_times(port, per_round)
                lat[label] += t

        print(f"\nScrape latency, {per_round * args.rounds} scrapes each, keep-alive + gzip, {args.rounds} "
              f"alternating rounds; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print("| exporter | p50 ms | p99 ms | p50 / p99 vs its peer row | gzip bytes |")
        print("|---|---|---|---|---|")
        for label, xs in lat.items():
            peer = like[0] if label == like[1] else full if label.startswith("vigil,") else None
            ratio = (f"{pct(xs, 50) / pct(lat[peer], 50):.2f}x / {pct(xs, 99) / pct(lat[peer], 99):.2f}x"
                     if peer else "(peer)")
            print(f"| {label} | {pct(xs, 50) * 1e3:.2f} | {pct(xs, 99) * 1e3:.2f} | {ratio} | {sizes[label]} |")
        ne99 = pct(lat[like[0]], 99)
        agents = {node: (targets[f"vigil, every collector, {node} (different work)"], procs[3 + i])
                  for i, node in enumerate(nodes)}

        # Steady cost of one agent at default intervals, scraped every 15 s like Prometheus would.
        node = nodes[0]
        port, proc = agents[node]
        ps = psutil.Process(proc.pid)
        c0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
        rss = []
        while time.monotonic() - w0 < args.soak:
            scrape_times(port, 1)
            rss.append(ps.memory_info().rss)
            time.sleep(min(15.0, max(0.0, args.soak - (time.monotonic() - w0))))
        cpu = (sum(ps.cpu_times()[:2]) - c0) / (time.monotonic() - w0) * 100
        print(f"\nSteady agent on {node} at default intervals for {args.soak:.0f}s: CPU {cpu:.2f}% of one core, "
              f"RSS {max(rss) / 2**20:.1f} MiB (max), {statistics.median(rss) / 2**20:.1f} MiB (median)")
        ok = pct(lat[like[1]], 99) <= ne99 and max(rss) <= 60 * 2**20 and cpu <= 1.0
        print("targets met" if ok else "TARGETS MISSED")
        return 0 if ok else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
