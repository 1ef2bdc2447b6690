"""Scrape benchmark: Vigil's /metrics against Debian's prometheus-node-exporter, scraped in the same run.

    .venv/bin/python bench/scrape_bench.py [--scrapes 2000] [--soak 60]

- Scrape latency: alternating rounds against both exporters over keep-alive HTTP with gzip, as Prometheus
  scrapes; reports p50/p99 per exporter and the ratio (Vigil / node_exporter).
- Steady cost: the agent serving a fixture node at its default intervals, scraped every 15 s, for --soak
  seconds; reports CPU (% of one core) and RSS.
Targets (issue 2): scrape p99 no worse than node_exporter's; RSS <= 60 MB; CPU <= 1% of one core.
"""
from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
AGENT = str(Path(sys.executable).parent / "agent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    try:
        ne_port = free_port()
        procs.append(subprocess.Popen([ne_bin, f"--web.listen-address=127.0.0.1:{ne_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        agents = {}
        for node in nodes:
            port = free_port()
            p = subprocess.Popen([AGENT, "--snapshot", node, "--listen", f"127.0.0.1:{port}", "--log-level",
                                  "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            agents[node] = (port, p)
        wait_http(ne_port)
        for port, _ in agents.values():
            wait_http(port)

        lat: dict[str, list[float]] = {"node_exporter": []}
        sizes: dict[str, int] = {}
        per_round = max(1, args.scrapes // args.rounds)
        for _ in range(args.rounds):  # alternate, so drift on the machine hits both alike
            t, sizes["node_exporter"] = scrape_times(ne_port, per_round)
            lat["node_exporter"] += t
            for node, (port, _) in agents.items():
                t, sizes[f"vigil:{node}"] = scrape_times(port, per_round)
                lat.setdefault(f"vigil:{node}", []).extend(t)

        ne99 = pct(lat["node_exporter"], 99)
        print(f"\nScrape latency, {per_round * args.rounds} scrapes each, keep-alive + gzip, {args.rounds} "
              f"alternating rounds")
        print("| exporter | p50 ms | p99 ms | p99 vs node_exporter | gzip bytes |")
        print("|---|---|---|---|---|")
        for name, xs in lat.items():
            print(f"| {name} | {pct(xs, 50) * 1e3:.2f} | {pct(xs, 99) * 1e3:.2f} | {pct(xs, 99) / ne99:.2f}x "
                  f"| {sizes[name]} |")

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
        ok = pct(lat[f'vigil:{node}'], 99) <= ne99 and max(rss) <= 60 * 2**20 and cpu <= 1.0
        print("targets met" if ok else "TARGETS MISSED")
        return 0 if ok else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
