"""The agent's cost as the node's hardware grows (issue 15): CPU per collection cycle, RSS, /metrics size and scrape
latency, from 8 to 64 GPU partitions, 8 to 32 RDMA ports and 50 to 500 containers.

    .venv/bin/python bench/agent_cost_bench.py                 # sizes 8/8/50 ... 64/32/500; about 3 minutes
    .venv/bin/python bench/agent_cost_bench.py --seconds 60    # longer soak per size (steadier CPU figures)

Each size is a fixture node built by bench/scale_fixtures.py from real captures (an MI300X node in CPX mode shows
64 GPUs); the real agent serves it (`python -m agent.cli --snapshot DIR`, every collector that a snapshot can run:
gpu, rdma, and containers: the kubelet's PodResources answer, pods of a worker holding a GPU and a sidecar) at --interval seconds per cycle, and is scraped every 15 s like Prometheus would. Reported per size:
  cpu %      the agent process's CPU time / wall time over the soak (100 = one core)
  ms/cycle   CPU time per collection cycle (cpu seconds / cycles in the soak)
  rss        VmRSS at the end of the soak
  /metrics   uncompressed bytes and series; scrape p50/p99 over --scrapes keep-alive scrapes (gzip)
Goal: linear in the size, and at 64 GPUs + 32 ports under 1% of a core and 60 MB (at the default 10 s interval).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchlib import free_port  # noqa: E402 (bench/ is the script's own directory)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from scale_fixtures import build  # noqa: E402


def scrape(conn: http.client.HTTPConnection, gzip: bool = True) -> bytes:
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
    return conn.getresponse().read()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(node_dir: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "--snapshot", str(node_dir), "--listen",
                             f"127.0.0.1:{port}", "--log-level", "warning"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                scrape(conn)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the agent on {node_dir} did not serve") from None
                time.sleep(0.2)
        time.sleep(2)  # past start-up
        ps = psutil.Process(proc.pid)
        c0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
        while time.monotonic() - w0 < args.seconds:
            scrape(conn)
            time.sleep(min(15.0, max(0.0, args.seconds - (time.monotonic() - w0))))
        wall = time.monotonic() - w0
        cpu = sum(ps.cpu_times()[:2]) - c0
        rss = ps.memory_info().rss
        body = scrape(conn, gzip=False)
        times = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            scrape(conn)
            times.append(time.perf_counter() - t0)
        conn.close()
        cycles = wall / args.interval
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        return {"cpu_pct": round(100 * cpu / wall, 2), "ms_per_cycle": round(1000 * cpu / cycles, 1),
                "rss_mib": round(rss / 2**20, 1), "metrics_bytes": len(body), "series": series,
                "scrape_p50_ms": round(1000 * pct(times, 50), 2), "scrape_p99_ms": round(1000 * pct(times, 99), 2)}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8x8x50,16x16x100,32x24x250,64x32x500",
                   help="GPUSxPORTS[xCONTAINERS],... (default 8x8x50,16x16x100,32x24x250,64x32x500)")
    p.add_argument("--seconds", type=float, default=30.0, help="soak per size")
    p.add_argument("--interval", type=float, default=10.0, help="the agent's collection interval (its default)")
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()}", flush=True)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vigil-scale-fixtures-"))
    for size in args.sizes.split(","):
        gpus, ports, containers = ([int(x) for x in size.split("x")] + [0])[:3]
        row = {"gpus": gpus, "rdma_ports": ports, "containers": containers,
               **measure(build(tmp / size, gpus, ports, containers=containers), args)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("| GPUs | RDMA ports | containers | cpu % | CPU ms/cycle | RSS MiB | /metrics bytes | series | scrape p50 ms "
          "| p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['rdma_ports']} | {r['containers']} | {r['cpu_pct']} | {r['ms_per_cycle']} | {r['rss_mib']} | "
              f"{r['metrics_bytes']} | {r['series']} | {r['scrape_p50_ms']} | {r['scrape_p99_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    big = rows[-1]
    print("goal at the largest size (< 1% of a core, < 60 MB):",
          "met" if big["cpu_pct"] < 1.0 and big["rss_mib"] * 2**20 < 60e6 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
