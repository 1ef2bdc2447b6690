"""Aggregator at fleet size: N simulated agents against one real replica and the fake API server holding N Nodes.

    .venv/bin/python bench/fleet_bench.py                         # N = 1000 2500 5000 10000, about 6 minutes
    .venv/bin/python bench/fleet_bench.py --nodes 1000 2500       # a shorter curve
    .venv/bin/python bench/fleet_bench.py --storm                 # 500 nodes fatal within 10 s, 10% budget, N=1000

Per N, three processes on this machine, each started afresh: the fake API server (agent/fakekube, N Nodes, its
own process: it records when each request arrives), the real `vigil-aggregator` (python -m agent.aggregator.cli,
Lease election, the budget ledger on the Lease, `--insecure-no-auth` so that connecting is not N TokenReviews), and
this load generator (grpc.aio in one process; by default one TCP connection per simulated agent, as in a cluster).

Every simulated agent: a Hello with a digest (one warning-level problem on a tenth of the nodes, as a fleet has), a
Heartbeat with the same digest every --heartbeat seconds (the aggregator's default asks for 10), a batch of
--batch info events every --event-interval seconds (container exits, tuner writes: realistic, not a flood), and
on --fatal-percent of the nodes one fatal state event at a moment spread over the measured phase.

Measured over the phase (--seconds, after every node's first condition is published):
  cpu %     the aggregator process's CPU time / wall time (100 = one core)
  rss       its VmRSS at the end, and (rss - rss before any stream) / N per node
  hb us     time to apply one Heartbeat on the event loop (vigil_aggregator_heartbeat_seconds, mean and p99 bucket)
  p50/p99   fatal batch written by the generator -> that node's cordon PUT arriving at the fake (same clock)
  req/s     requests the aggregator made to the API server during the phase, by kind
  refused   streams refused or failed to connect (must be 0)
Prints one table (and --json FILE writes the rows).

--storm (issue 15): N nodes with a --budget-percent budget (default 10%); --storm-nodes of them (default 500)
turn fatal within --storm-seconds (default 10). Checks: exactly the budgeted number quarantined, the breaker
opened once (one VigilCordonBudgetExhausted Event), and the request rate the aggregator made stays under its
client-side limit (--kube-qps, passed through to the aggregator).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchlib import free_port, wait_ready  # noqa: E402 (bench/ is the script's own directory)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent._proto.vigil.v1 import health_pb2 as pb  # noqa: E402
from aggregator_bench import Encoder, field, metric, pct, scrape, varint  # noqa: E402,F401

METHOD = "/vigil.v1.Health/Stream"
CLK = os.sysconf("SC_CLK_TCK")


# -- the fake API server, in its own process ---------------------------------------------------------------
def fake_api(conn, nodes: int) -> None:
    from agent.aggregator.policy import TAINT_KEY
    from agent.fakekube import server

    server._Handler.disable_nagle_algorithm = True  # as Go's net/http does (see bench/aggregator.md)
    fk = server.FakeKube(log_limit=5_000_000, history=max(10000, 2 * nodes)).start()
    for i in range(nodes):
        fk.add_node(f"node-{i:05d}")
    tmp = tempfile.mkdtemp(prefix="vigil-fleet-")
    conn.send((fk.url, fk.write_kubeconfig(os.path.join(tmp, "kubeconfig")), os.getpid()))
    while True:
        cmd, *arg = conn.recv()
        if cmd == "puts":  # (node, first 200 PUT wall time) for every node PUT; nodes cordoned twice; PUTs
            out: dict[str, float] = {}
            tainted: dict[str, bool] = {}
            added: dict[str, int] = {}
            puts = 0
            for r in fk.requests("PUT", r"^/api/v1/nodes/[^/]+$"):
                if r.status == 200:
                    name = r.path.rsplit("/", 1)[1]
                    puts += 1
                    out.setdefault(name, r.time)
                    # a double cordon: Vigil's taint added to the node twice (absent, then present, twice over);
                    # the quarantine's second PUT (the blast-radius annotation) keeps it and is not one
                    has = any(t.get("key") == TAINT_KEY for t in
                              (json.loads(r.body or b"{}").get("spec") or {}).get("taints") or [])
                    if has and not tainted.get(name, False):
                        added[name] = added.get(name, 0) + 1
                    tainted[name] = has
            conn.send((out, sum(1 for n in added.values() if n > 1), puts))
        elif cmd == "count":  # requests by kind within [t0, t1]
            t0, t1 = arg
            kinds: dict[str, int] = {}
            for r in fk.requests():
                if t0 <= r.time <= t1 and not r.query.get("watch"):
                    kinds[_kind(r.method, r.path)] = kinds.get(_kind(r.method, r.path), 0) + 1
            conn.send(kinds)
        elif cmd == "events":  # Event reasons created
            reasons: dict[str, int] = {}
            for o in fk.list("events"):
                reasons[o.get("reason", "")] = reasons.get(o.get("reason", ""), 0) + 1
            conn.send(reasons)
        elif cmd == "cordoned":
            conn.send(sum(1 for o in fk.list("nodes") if (o.get("spec") or {}).get("unschedulable")))
        elif cmd == "stop":
            fk.close()
            conn.send("bye")
            return


def _kind(method: str, path: str) -> str:
    if "/leases" in path:
        return "lease"
    if "/events" in path:
        return "event"
    if path.endswith("/status"):
        return "node_status"
    if path.startswith("/api/v1/nodes"):
        return "node_get" if method == "GET" else "node_write"
    return "other"


# -- pre-encoded messages -----------------------------------------------------------------------------------
WARN = pb.Problem(check="rdma.port.symbol_errors", entity="mlx5_3/1", severity=pb.SEVERITY_WARNING,
                  status=pb.STATUS_UNHEALTHY, message="symbol errors rising: 12 in 10 min")


def hello_bytes(node: str, digest: list) -> bytes:
    return pb.AgentMessage(hello=pb.Hello(node=node, boot_id=f"boot-{node}", spool_epoch=f"epoch-{node}",
                                          agent_version="fleet-bench", digest=digest, handles_rejections=True)
                           ).SerializeToString()


def heartbeat_bytes(digest: list, seq: int) -> bytes:
    return pb.AgentMessage(heartbeat=pb.Heartbeat(digest=digest, digest_seq=seq)).SerializeToString()


class Agent:
    def __init__(self, i: int, channel, stats: dict) -> None:
        self.node = f"node-{i:05d}"
        self.enc = Encoder(f"boot-{self.node}")
        self.digest = [WARN] if i % 10 == 3 else []
        self.seq = 0
        self.channel = channel
        self.stats = stats
        self.fatal_at: float | None = None
        self.call = None
        self.reader: asyncio.Task | None = None

    async def connect(self) -> bool:
        try:
            stream = self.channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                                response_deserializer=pb.AggregatorMessage.FromString)
            self.call = stream()
            await self.call.write(hello_bytes(self.node, self.digest))
            welcome = await asyncio.wait_for(self.call.read(), 60)
            if welcome is None or not hasattr(welcome, "HasField") or not welcome.HasField("welcome"):
                raise RuntimeError(f"no Welcome: {welcome!r}")
        except Exception as e:  # noqa: BLE001 - counted: the goal is none
            self.stats["refused"] += 1
            self.stats.setdefault("why", str(e)[:200])
            return False
        self.reader = asyncio.create_task(self._read())
        return True

    async def _read(self) -> None:
        while True:
            msg = await self.call.read()
            if msg is None or not hasattr(msg, "HasField"):
                if msg is not None and self.stats["phase"]:
                    self.stats["ended"] += 1
                return

    async def send(self, n: int, fatal: bool = False) -> None:
        data = self.enc.batch(self.seq + 1, n, fatal)
        self.seq += n
        if fatal:
            self.fatal_at = time.time()
        await self.call.write(data)
        self.stats["events"] += n

    async def live(self, args: argparse.Namespace, until: float, fatal_at: float | None) -> None:
        """Heartbeats and events on their intervals (each with a random phase), the fatal event at its moment."""
        now = time.monotonic()
        next_hb = now + random.uniform(0, args.heartbeat)
        next_ev = now + random.uniform(0, args.event_interval)
        try:
            while True:
                t = min(next_hb, next_ev, fatal_at if fatal_at is not None and self.fatal_at is None else until)
                await asyncio.sleep(max(0.0, t - time.monotonic()))
                now = time.monotonic()
                if now >= until:
                    return
                if fatal_at is not None and self.fatal_at is None and now >= fatal_at:
                    await self.send(1, fatal=True)
                if now >= next_ev:
                    await self.send(args.batch)
                    next_ev += args.event_interval
                if now >= next_hb:
                    await self.call.write(heartbeat_bytes(self.digest, self.seq))
                    self.stats["heartbeats"] += 1
                    next_hb += args.heartbeat
        except Exception:  # noqa: BLE001 - the stream ended under us: counted by _read
            return


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def hb_stats(text: str) -> tuple[float, float]:
    """(mean, p99 bucket bound) of vigil_aggregator_heartbeat_seconds, in microseconds."""
    n = metric(text, "vigil_aggregator_heartbeat_seconds_count")
    total = metric(text, "vigil_aggregator_heartbeat_seconds_sum")
    if not n:
        return float("nan"), float("nan")
    buckets = []
    for line in text.splitlines():
        if line.startswith("vigil_aggregator_heartbeat_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    p99 = next((le for le, c in sorted(buckets) if c >= 0.99 * n), float("inf"))
    return 1e6 * total / n, 1e6 * p99


async def fleet(args: argparse.Namespace, n: int, grpc_port: int, metrics_url: str, fake, agg_pid: int,
                fake_pid: int, rss_base: float) -> dict:
    import grpc

    stats = {"refused": 0, "events": 0, "heartbeats": 0, "ended": 0, "phase": False}
    opts = [("grpc.max_concurrent_streams", 100000), ("grpc.keepalive_time_ms", 60000)]
    conns = n if args.connections == 0 else min(n, args.connections)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=opts + [("grpc.channel_id", i)])
                for i in range(conns)]
    agents = [Agent(i, channels[i % conns], stats) for i in range(n)]
    t0 = time.monotonic()
    for k in range(0, n, 200):
        await asyncio.gather(*(a.connect() for a in agents[k:k + 200]))
    connect_s = time.monotonic() - t0
    print(f"  N={n}: {n - stats['refused']} streams connected over {conns} connections in {connect_s:.1f}s",
          flush=True)
    live = [a for a in agents if a.reader is not None]
    # every node's first condition (VigilHealthy=True) published before measuring; heartbeats keep them alive
    deadline = time.monotonic() + args.settle_timeout
    keep = [asyncio.create_task(a.live(args, deadline, None)) for a in live]
    while time.monotonic() < deadline:
        text = scrape(metrics_url)
        if metric(text, "vigil_aggregator_actions_total", action="condition", result="ok") >= len(live):
            break
        await asyncio.sleep(0.5)
    settle_s = time.monotonic() - t0 - connect_s
    for t in keep:
        t.cancel()
    await asyncio.gather(*keep, return_exceptions=True)
    print(f"  N={n}: first conditions published {settle_s:.1f}s after the last connect", flush=True)
    await asyncio.sleep(1.0)  # let the Events of the settle drain

    # the measured phase
    if args.storm:
        victims = random.sample(range(len(live)), min(args.storm_nodes, len(live)))
        span = args.storm_seconds
    else:
        victims = random.sample(range(len(live)), max(1, round(len(live) * args.fatal_percent / 100)))
        span = args.seconds - 4
    text0 = scrape(metrics_url)
    start = time.monotonic()
    wall0 = time.time()
    cpu0, fcpu0, gcpu0 = proc_cpu(agg_pid), proc_cpu(fake_pid), proc_cpu(os.getpid())
    fatal_times = {v: start + 1 + span * k / len(victims) for k, v in enumerate(victims)}
    stats["phase"] = True
    until = start + args.seconds
    await asyncio.gather(*(a.live(args, until, fatal_times.get(i)) for i, a in enumerate(live)))
    elapsed = time.monotonic() - start
    wall1 = time.time()
    cpu1, fcpu1, gcpu1 = proc_cpu(agg_pid), proc_cpu(fake_pid), proc_cpu(os.getpid())
    rss = rss_mib(agg_pid)
    await asyncio.sleep(2)
    text = scrape(metrics_url)
    fake.send(("puts",))
    first_put, twice, puts = fake.recv()
    fake.send(("count", wall0, wall1))
    kinds = fake.recv()
    lat = [(first_put[live[v].node] - live[v].fatal_at) * 1000 for v in victims
           if live[v].fatal_at is not None and live[v].node in first_put]
    hb_mean, hb_p99 = hb_stats(text)
    hb0_n = metric(text0, "vigil_aggregator_heartbeat_seconds_count")
    row = {
        "nodes": n, "connections": conns, "connect_s": round(connect_s, 1), "settle_s": round(settle_s, 1),
        "refused": stats["refused"] + int(metric(text, "vigil_aggregator_streams_refused_total")),
        "ended_by_server": stats["ended"],
        "events_per_s": round(stats["events"] / elapsed), "heartbeats_per_s": round(stats["heartbeats"] / elapsed),
        "agg_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "fake_cpu_pct": round(100 * (fcpu1 - fcpu0) / elapsed, 1),
        "gen_cpu_pct": round(100 * (gcpu1 - gcpu0) / elapsed, 1),
        "rss_mib": round(rss, 1), "rss_base_mib": round(rss_base, 1),
        "rss_kib_per_node": round(1024 * (rss - rss_base) / n, 1),
        "hb_us_mean": round(hb_mean, 1), "hb_us_p99_le": hb_p99,
        "heartbeats_applied": int(metric(text, "vigil_aggregator_heartbeat_seconds_count") - hb0_n),
        "fatal": len(victims), "cordoned": len(lat), "double_cordons": twice, "node_puts": puts,
        "p50_ms": round(pct(lat, 50), 1) if lat else None, "p99_ms": round(pct(lat, 99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "api_req_per_s": round(sum(kinds.values()) / (wall1 - wall0), 1),
        "api_req_per_s_by_kind": {k: round(v / (wall1 - wall0), 1) for k, v in sorted(kinds.items())},
    }
    if args.storm:
        deadline = time.monotonic() + 60  # Events go last through the rate limit: wait for the breaker's
        while True:
            fake.send(("events",))
            reasons = fake.recv()
            if reasons.get("VigilCordonBudgetExhausted") or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        fake.send(("cordoned",))
        row.update(storm_nodes=len(victims), storm_seconds=span,
                   budget=max(1, int(n * args.budget_percent / 100)), quarantined=len(first_put),
                   cordoned_nodes=fake.recv(), breaker_events=reasons.get("VigilCordonBudgetExhausted", 0),
                   breaker_open=metric(text, "vigil_aggregator_breaker_open"),
                   refused_budget=metric(text, "vigil_aggregator_actions_total", action="quarantine",
                                         result="refused_budget"),
                   kube_qps=args.kube_qps)
    for a in live:
        a.call.cancel()
    for ch in channels:
        await ch.close()
    return row


def one(args: argparse.Namespace, n: int) -> dict:
    parent, child = mp.Pipe()
    # spawn, not fork: a fork of a process that has run grpc spins in grpc's fork handlers
    fake = mp.get_context("spawn").Process(target=fake_api, args=(child, n), daemon=True)
    fake.start()
    url, kubeconfig, fake_pid = parent.recv()
    grpc_port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "agent.aggregator.cli", "--kubeconfig", kubeconfig, "--namespace", "vigil",
           "--identity", "fleet-0", "--insecure-no-auth", "--listen", f"127.0.0.1:{grpc_port}",
           "--metrics-listen", f"127.0.0.1:{metrics_port}", "--healthy-delay", "600", "--heartbeat-timeout", "600",
           "--log-level", "warning"]
    if args.storm:
        cmd += ["--budget-percent", str(args.budget_percent)]
    if args.kube_qps is not None:
        cmd += ["--kube-qps", str(args.kube_qps)]
    cmd += args.aggregator_arg
    agg = subprocess.Popen(cmd, cwd=ROOT)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_ready(metrics_port, 60, agg)
        time.sleep(1.0)
        rss_base = rss_mib(agg.pid)
        return asyncio.run(fleet(args, n, grpc_port, metrics_url, parent, agg.pid, fake_pid, rss_base))
    finally:
        agg.terminate()
        try:
            agg.wait(15)
        except subprocess.TimeoutExpired:
            agg.kill()
        parent.send(("stop",))
        parent.recv()
        fake.join(5)


def table(rows: list[dict], storm: bool) -> str:
    head = ["N", "conn s", "settle s", "refused", "ev/s", "hb/s", "agg cpu %", "rss MiB", "KiB/node", "hb us",
            "fatal", "cordoned", "p50 ms", "p99 ms", "max ms", "api req/s", "gen cpu %", "fake cpu %"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join(str(x) for x in (
            r["nodes"], r["connect_s"], r["settle_s"], r["refused"], r["events_per_s"], r["heartbeats_per_s"],
            r["agg_cpu_pct"], r["rss_mib"], r["rss_kib_per_node"], r["hb_us_mean"], r["fatal"], r["cordoned"],
            r["p50_ms"], r["p99_ms"], r["max_ms"], r["api_req_per_s"], r["gen_cpu_pct"], r["fake_cpu_pct"])) + " |")
    text = "\n".join(out)
    for r in rows:
        text += f"\nN={r['nodes']}: api req/s by kind {r['api_req_per_s_by_kind']}"
        if storm:
            text += (f"\nstorm: {r['storm_nodes']} nodes fatal within {r['storm_seconds']} s, budget "
                     f"{r['budget']} ({r['nodes']} nodes x {args_budget[0]}%): quarantined {r['quarantined']}, "
                     f"cordoned {r['cordoned_nodes']}, refused by the budget {r['refused_budget']:.0f}, breaker "
                     f"Events {r['breaker_events']}, breaker open {r['breaker_open']:.0f}, double cordons "
                     f"{r['double_cordons']}; admitted p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms; API "
                     f"{r['api_req_per_s']} req/s (limit --kube-qps {r['kube_qps']})")
    return text


args_budget = [10.0]


def _strip_sizes(argv: list[str]) -> list[str]:
    """The parent's flags for a child, without --nodes N... and --json FILE (the parent's)."""
    out, skip = [], False
    for a in argv:
        if a in ("--nodes", "--json"):
            skip = True
            continue
        if skip and (a.lstrip("-").isdigit() or not a.startswith("--")):
            continue
        skip = False
        out.append(a)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="+", default=None, help="fleet sizes (default 1000 2500 5000 10000)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the measured phase")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between an agent's heartbeats")
    p.add_argument("--event-interval", type=float, default=10.0, help="seconds between an agent's event batches")
    p.add_argument("--batch", type=int, default=2, help="info events per batch")
    p.add_argument("--fatal-percent", type=float, default=2.0, help="nodes that turn fatal during the phase")
    p.add_argument("--connections", type=int, default=0, help="TCP connections (0: one per agent)")
    p.add_argument("--settle-timeout", type=float, default=300.0)
    p.add_argument("--storm", action="store_true", help="the storm: --storm-nodes fatal within --storm-seconds")
    p.add_argument("--storm-nodes", type=int, default=500)
    p.add_argument("--storm-seconds", type=float, default=10.0)
    p.add_argument("--budget-percent", type=float, default=10.0)
    p.add_argument("--kube-qps", type=float, default=None, help="the aggregator's client-side API rate limit")
    p.add_argument("--aggregator-arg", action="append", default=[], help="an extra flag for the aggregator")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args_budget[0] = args.budget_percent
    sizes = args.nodes or ([1000] if args.storm else [1000, 2500, 5000, 10000])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per agent, both ends in this machine
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the aggregator and the fake
    if hard < max(sizes) + 1000:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {max(sizes)} connections; "
              f"use --connections", file=sys.stderr)
    if args.one is not None:  # a child: one size, its row as the last line
        print(json.dumps(one(args, args.one)), flush=True)
        return 0
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()}", flush=True)
    rows = []
    for n in sizes:
        # each size in a fresh generator process: grpc.aio does not outlive its first event loop cleanly
        argv = [a for a in sys.argv[1:]]
        out = subprocess.run([sys.executable, __file__, "--one", str(n)] + _strip_sizes(argv), cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        print("\n".join(x for x in out.stdout.splitlines() if not x.startswith("{")), flush=True)
        if out.returncode != 0 or not lines:
            print(f"N={n}: the run failed (exit {out.returncode})", flush=True)
            continue
        rows.append(json.loads(lines[-1]))
        print(lines[-1], flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(table(rows, args.storm))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
