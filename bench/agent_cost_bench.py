"""The agent's cost as the node's hardware grows (issue 15): CPU per collection cycle, RSS, /metrics size and scrape
latency, from 8 to 64 GPU partitions, 8 to 32 RDMA ports and 50 to 500 containers.

    .venv/bin/python bench/agent_cost_bench.py                 # sizes 8/8/50 ... 64/32/500; about 3 minutes
    .venv/bin/python bench/agent_cost_bench.py --seconds 60    # longer soak per size (steadier CPU figures)
    sudo .venv/bin/python bench/agent_cost_bench.py --live 500 # the live agent instead, every collector on

Each size is a fixture node built by bench/scale_fixtures.py from real captures (an MI300X node in CPX mode shows
64 GPUs); the real agent serves it (`python -m agent.cli --snapshot DIR`, every collector that a snapshot can run:
gpu, rdma, and containers: the kubelet's PodResources answer, pods of a worker holding a GPU and a sidecar) at --interval seconds per cycle, and is scraped every 15 s like Prometheus would. Reported per size:
  cpu %      the agent process's CPU time / wall time over the soak (100 = one core)
  ms/cycle   CPU time per collection cycle (cpu seconds / cycles in the soak)
  rss        VmRSS at the end of the soak
  /metrics   uncompressed bytes and series; scrape p50/p99 over --scrapes keep-alive scrapes (gzip)
Goal: linear in the size, and at 64 GPUs + 32 ports under 1% of a core and 60 MB (at the default 10 s interval).

--live N runs the agent on this host instead of a snapshot, with every collector on: a private containerd
(tests/containers/helpers.py, the tests' real daemon) holding N containers with CRI labels, a kubelet PodResources
server answering for them, and the rest (sysctl tuner, RDMA, GPU events, kernel, mounts, PCIe, NVMe, the netflow
probe) reading the host. Reported as above, plus each child process's RSS (the eBPF probe runs in its own).
Goal: the agent under 40 MB, the eBPF child apart.

Where the agent's memory goes (issue 15; numbers in README.md, "The agent as hardware grows"): RSS is mostly
code, not data. The interpreter is 10 MB, the agent's imports about 8 MB more, http.server 5 MB (it loads
http.client, which loads ssl and OpenSSL's libcrypto), grpc 11 MB (10 MB of it the resident cygrpc library) when
a gRPC client is used: containerd, PodResources, the stream; a snapshot replay loads none of it. Python's
own objects at 64x32x500 are about 6 MB besides the code.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
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
from smaps import breakdown, table  # noqa: E402


def scrape(conn: http.client.HTTPConnection, gzip: bool = True) -> bytes:
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
    return conn.getresponse().read()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(node_dir: Path | None, args: argparse.Namespace, config: Path | None = None) -> dict:
    """One agent: replaying `node_dir`, or live on this host (node_dir None) with `config`."""
    port = free_port()
    where = ["--snapshot", str(node_dir)] if node_dir is not None else ["--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Live: the agent's own view of its memory too (bench/agent_inside.py writes it on SIGUSR1).
    inside = Path(tempfile.mkdtemp(prefix="vigil-inside-")) / "inside.json" if node_dir is None else None
    run = ["-m", "agent.cli"] if inside is None else [str(ROOT / "bench" / "agent_inside.py"), str(inside)]
    if inside is not None and args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    proc = subprocess.Popen([sys.executable, *run, *where, "--listen", f"127.0.0.1:{port}", "--log-level",
                             "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                scrape(conn)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the agent on {node_dir or 'this host'} did not serve") from None
                time.sleep(0.2)
        time.sleep(2)  # past start-up
        ps = psutil.Process(proc.pid)
        c0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
        timeline = []  # (seconds since start, VmRSS MiB) at each scrape
        while time.monotonic() - w0 < args.seconds:
            scrape(conn)
            timeline.append((round(time.monotonic() - w0), round(ps.memory_info().rss / 2**20, 1)))
            time.sleep(min(15.0, max(0.0, args.seconds - (time.monotonic() - w0))))
        wall = time.monotonic() - w0
        cpu = sum(ps.cpu_times()[:2]) - c0
        rss = ps.memory_info().rss
        children = {" ".join(c.cmdline()[1:3]): round(c.memory_info().rss / 2**20, 1)
                    for c in ps.children(recursive=True)}  # the netflow probe (BCC) runs in its own process
        body = scrape(conn, gzip=False)
        times = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            scrape(conn)
            times.append(time.perf_counter() - t0)
        conn.close()
        cycles = wall / args.interval
        lines = body.decode().splitlines()
        series = sum(1 for line in lines if line and not line.startswith("#"))
        failed = [line for line in lines if line.startswith("vigil_collector_success") and line.endswith(" 0.0")]
        extra = {"children_rss_mib": children, "collectors_failed": failed} if node_dir is None else {}
        if inside is not None:
            extra["rss_timeline"] = timeline
            extra["smaps"] = breakdown(proc.pid)
            proc.send_signal(signal.SIGUSR1)
            for _ in range(50):
                if inside.exists():
                    extra["inside"] = json.loads(inside.read_text())
                    break
                time.sleep(0.1)
        return {**extra, "cpu_pct": round(100 * cpu / wall, 2), "ms_per_cycle": round(1000 * cpu / cycles, 1),
                "rss_mib": round(rss / 2**20, 1), "metrics_bytes": len(body), "series": series,
                "scrape_p50_ms": round(1000 * pct(times, 50), 2), "scrape_p99_ms": round(1000 * pct(times, 99), 2)}
    finally:
        proc.terminate()
        proc.wait(10)
        if inside is not None:
            shutil.rmtree(inside.parent, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8x8x50,16x16x100,32x24x250,64x32x500",
                   help="GPUSxPORTS[xCONTAINERS],... (default 8x8x50,16x16x100,32x24x250,64x32x500)")
    p.add_argument("--seconds", type=float, default=30.0, help="soak per size")
    p.add_argument("--interval", type=float, default=10.0, help="the agent's collection interval (its default)")
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--live", type=int, metavar="CONTAINERS",
                   help="instead: the agent live on this host, every collector on, with a private containerd holding "
                        "CONTAINERS containers (pods of a worker and a sidecar, CRI labels) and a kubelet PodResources "
                        "server answering for them (needs root, containerd, ctr; the tests' real daemon and server)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="with --live: trace the agent's Python allocations (the largest sites are printed; the "
                        "tracing costs memory of its own, so take the RSS figures from a run without it)")
    p.add_argument("--live-fixture", metavar="DIR", help=argparse.SUPPRESS)  # live()'s child process
    args = p.parse_args()
    if args.live_fixture:
        return live_fixture(Path(args.live_fixture), args.live)
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()}", flush=True)
    if args.live is not None:
        return live(args)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vigil-scale-fixtures-"))
    try:
        for size in args.sizes.split(","):
            gpus, ports, containers = ([int(x) for x in size.split("x")] + [0])[:3]
            row = {"gpus": gpus, "rdma_ports": ports, "containers": containers,
                   **measure(build(tmp / size, gpus, ports, containers=containers), args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # 11 MB per large node
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


def live(args: argparse.Namespace) -> int:
    """The live agent (goal: under 40 MB, the eBPF child apart): containerd and the kubelet are real gRPC
    servers here (tests/containers/helpers.py), the rest of the collectors read this host as they would a node.
    They run in a child process (live_fixture) that loads its own copy of the grpc package: on a node the kubelet
    and containerd are Go programs, and a Python kubelet in this process, loading the very cygrpc library the
    agent loads, would put pages of it in the page cache that the kernel's fault-around then maps into the
    agent too, making the agent's RSS depend on the bench."""
    import importlib.util

    tmp = Path(tempfile.mkdtemp(prefix="vigil-live-", dir="/tmp"))  # short: unix socket paths
    try:
        grpc_dir = Path(importlib.util.find_spec("grpc").submodule_search_locations[0])  # found, not imported
        shutil.copytree(grpc_dir, tmp / "site" / "grpc")
        fixture = subprocess.Popen([sys.executable, __file__, "--live-fixture", str(tmp), "--live", str(args.live)],
                                   cwd=ROOT, env=dict(os.environ, PYTHONPATH=f"{tmp / 'site'}:{ROOT}"),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            config = fixture.stdout.readline().strip()  # the fixture's config, once containerd holds every container
            if not config:
                raise RuntimeError("the live fixture (containerd, kubelet) did not start")
            row = {"containers": args.live, **measure(None, args, Path(config))}
        finally:
            fixture.stdin.close()  # the fixture stops the kubelet and containerd
            fixture.wait(300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    smaps, inside = row.pop("smaps"), row.pop("inside", {})
    print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print("VmRSS MiB at each scrape (s: MiB):", ", ".join(f"{t}: {m}" for t, m in row["rss_timeline"]))
    print(f"where the agent's memory is after {args.seconds:g} s (bench/smaps.py):")
    print(table(smaps))
    if inside:
        print(f"Python's allocated blocks: {inside['allocated_blocks']}; {len(inside['modules'])} modules; "
              f"threads: {', '.join(inside['threads'])}")
        if "traced_bytes" in inside:
            print(f"tracemalloc: {inside['traced_bytes'] / 2**20:.1f} MiB traced; the largest sites:")
            for s in inside["top_lines"][:15]:
                print(f"  {s['bytes'] / 2**10:8.0f} KiB {s['blocks']:7d} blocks  {s['at']}")
    row["smaps"], row["inside"] = smaps, inside
    print("| live, containers | cpu % | CPU ms/cycle | RSS MiB | children (RSS MiB) | /metrics bytes | series |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['containers']} | {row['cpu_pct']} | {row['ms_per_cycle']} | {row['rss_mib']} | "
          f"{row['children_rss_mib']} | {row['metrics_bytes']} | {row['series']} |")
    if row["collectors_failed"]:
        print("collectors that failed:", row["collectors_failed"])
    print("goal live (< 40 MB, the eBPF child apart):", "met" if row["rss_mib"] * 2**20 < 40e6 else "NOT met")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


def live_fixture(tmp: Path, containers: int) -> int:
    """live()'s child: a private containerd holding `containers` containers and a kubelet PodResources server
    answering for them; prints the agent's config file, serves until stdin closes, then removes both."""
    sys.path.insert(0, str(ROOT))
    from google.protobuf import json_format
    from scale_fixtures import pod_resources
    from tests.containers.helpers import Containerd, PodResources, write_oci_image

    write_oci_image(tmp / "image.tar")
    daemon = Containerd(tmp / "image.tar")
    kubelet = PodResources(str(tmp / "kubelet.sock"))
    try:
        image = daemon.ctr("image", "ls", "-q").stdout.split()[0]
        for k in range(containers):
            pod, name = f"job-{k // 2:04d}", ("worker", "sidecar")[k % 2]
            labels = {"io.kubernetes.pod.namespace": "ml", "io.kubernetes.pod.name": pod,
                      "io.kubernetes.container.name": name, "io.kubernetes.pod.uid": f"uid-{k // 2:04d}",
                      "io.cri-containerd.kind": "container", "app.kubernetes.io/name": "trainer",
                      "batch.kubernetes.io/job-name": pod}
            daemon.ctr("container", "create", *[x for kv in labels.items() for x in ("--label", "=".join(kv))],
                       image, daemon.id(f"{pod}-{name}"), "sleep", "3600")
        json_format.ParseDict(pod_resources(containers, []), kubelet.response)
        config = tmp / "vigil.yaml"
        config.write_text(f"containers:\n  socket: {daemon.socket}\n  pod_resources_socket: {kubelet.socket}\n")
        print(config, flush=True)
        sys.stdin.read()  # until live() closes it
    finally:
        kubelet.stop()
        daemon.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
