"""Aggregator benchmark: events/s one replica sustains with 1,000 concurrent agent streams on loopback, and the
latency from a fatal event to the cordon write at the fake API server, at a given load.

    .venv/bin/python bench/aggregator_bench.py [--streams 1000] [--batch 20] [--seconds 10] [--rate 20000]

Three processes on this machine: the fake API server (agent/fakekube, 1,000 Nodes; it records when each
request arrives), the real `vigil-aggregator` (python -m agent.aggregator.cli: Lease election, budget ledger,
no token auth so the numbers are about the stream), and this load generator (grpc.aio, one bidirectional
stream per simulated agent, batches built as pre-encoded protobuf bytes so the generator costs little).

Phase 1, throughput: every stream sends batches closed-loop (a window of in-flight batches, cumulative acks)
for --seconds; events/s = events acknowledged / elapsed.
Phase 2, latency: streams send at --rate events/s in total; --fatal nodes each send one fatal event at a
random moment. Latency = the fatal batch's send time (wall clock) -> the arrival of the node's cordon PUT at
the fake API server (same machine, same clock): an upper bound of arrival -> cordon patch. The aggregator's
own decision-latency histogram (arrival -> writes done) is printed too.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from benchlib import free_port, wait_ready  # noqa: E402 (bench/ is the script's own directory)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent._proto.vigil.v1 import health_pb2 as pb  # noqa: E402

METHOD = "/vigil.v1.Health/Stream"


# -- the fake API server, in its own process ---------------------------------------------------------------
def fake_api(conn, nodes: int) -> None:
    from agent.fakekube import server

    # Go's net/http (kube-apiserver) sets TCP_NODELAY on every connection; the fake's handler writes headers
    # and body separately, and without it Nagle + delayed ACK add ~40 ms to every request. Be faithful here.
    server._Handler.disable_nagle_algorithm = True
    fk = server.FakeKube(log_limit=1_000_000).start()
    for i in range(nodes):
        fk.add_node(f"node-{i:04d}")
    tmp = tempfile.mkdtemp(prefix="vigil-bench-")
    conn.send((fk.url, fk.write_kubeconfig(os.path.join(tmp, "kubeconfig"))))
    while True:
        cmd = conn.recv()
        if cmd == "puts":
            out = [(r.path, r.time, r.status) for r in fk.requests("PUT", r"^/api/v1/nodes/")]
            conn.send(out)
        elif cmd == "count":
            conn.send(len(fk.requests()))
        elif cmd == "stop":
            fk.close()
            conn.send("bye")
            return


# -- pre-encoded messages -----------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, payload: bytes) -> bytes:  # length-delimited field
    return varint(num << 3 | 2) + varint(len(payload)) + payload


class Encoder:
    """Batch bytes = AgentMessage{batch=Batch{boot_id, events...}}: an Event is `08 <seq>` + a fixed tail."""

    def __init__(self, boot: str) -> None:
        tail = pb.Event(kind=pb.KIND_INFO, check="container.oom_kill", component="containers", entity="pod-x",
                        status=pb.STATUS_OK, severity=pb.SEVERITY_INFO, message="OOM kill",
                        observed_at_unix_ms=int(time.time() * 1000)).SerializeToString()
        self.tail = tail
        self.boot = field(1, boot.encode())
        fatal = pb.Event(kind=pb.KIND_STATE, check="gpu.ecc.uncorrectable", component="gpu", entity="gpu3",
                         status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL, message="2 uncorrectable ECC errors",
                         action="drain the node").SerializeToString()
        self.fatal_tail = fatal

    def batch(self, first_seq: int, n: int, fatal: bool = False) -> bytes:
        evs = b"".join(field(2, b"\x08" + varint(first_seq + i) + self.tail) for i in range(n - int(fatal)))
        if fatal:
            evs += field(2, b"\x08" + varint(first_seq + n - 1) + self.fatal_tail)
        return field(2, self.boot + evs)


def hello_bytes(node: str, boot: str, epoch: str) -> bytes:
    return pb.AgentMessage(hello=pb.Hello(node=node, boot_id=boot, spool_epoch=epoch, agent_version="bench")
                           ).SerializeToString()


HEARTBEAT = pb.AgentMessage(heartbeat=pb.Heartbeat()).SerializeToString()


# -- one simulated agent ----------------------------------------------------------------------------------
class Agent:
    def __init__(self, i: int, channel, stats: dict) -> None:
        self.node = f"node-{i:04d}"
        self.enc = Encoder(f"boot-{self.node}")
        self.seq = 0
        self.acked = 0
        self.channel = channel
        self.stats = stats
        self.call = None
        self.fatal_at: float | None = None  # wall time the fatal batch was written
        self._acked = asyncio.Event()

    async def connect(self) -> None:
        stream = self.channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                            response_deserializer=pb.AggregatorMessage.FromString)
        self.call = stream()
        await self.call.write(hello_bytes(self.node, f"boot-{self.node}", f"epoch-{self.node}"))
        welcome = await self.call.read()
        assert welcome.HasField("welcome"), welcome
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.call.read()
            if msg is None or not hasattr(msg, "HasField"):
                return
            if msg.HasField("ack") and msg.ack.seq > self.acked:
                self.stats["acked"] += msg.ack.seq - self.acked
                self.acked = msg.ack.seq
                self._acked.set()

    async def send(self, n: int, fatal: bool = False) -> None:
        data = self.enc.batch(self.seq + 1, n, fatal)
        self.seq += n
        if fatal:
            self.fatal_at = time.time()
        await self.call.write(data)

    async def closed_loop(self, n: int, window: int, until: float) -> None:
        while time.monotonic() < until:
            while self.seq - self.acked >= window * n:
                self._acked.clear()
                await self._acked.wait()
            await self.send(n)

    async def paced(self, n: int, interval: float, until: float, fatal_at: float | None, window: float) -> None:
        next_t = time.monotonic() + random.uniform(0, interval)
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            now = time.monotonic()
            if now >= until:
                return
            fatal = fatal_at is not None and now >= fatal_at and self.fatal_at is None
            await self.send(n, fatal)
            if now >= window:
                self.stats["window_sent"] += n
            if now - last_beat >= 10:
                await self.call.write(HEARTBEAT)
                last_beat = now
            next_t += interval


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


async def run(args: argparse.Namespace, grpc_port: int, metrics_url: str, fake) -> dict:
    import grpc

    stats = {"acked": 0, "window_sent": 0}
    opts = [("grpc.max_concurrent_streams", 100000)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=opts + [("grpc.channel_id", i)])
                for i in range(args.channels)]
    agents = [Agent(i, channels[i % len(channels)], stats) for i in range(args.streams)]
    t0 = time.monotonic()
    for k in range(0, len(agents), 100):
        await asyncio.gather(*(a.connect() for a in agents[k:k + 100]))
    print(f"{len(agents)} streams connected in {time.monotonic() - t0:.1f}s", flush=True)
    # let the aggregator publish its first condition on every node before measuring
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = scrape(metrics_url)
        if metric(text, "vigil_aggregator_actions_total", action="condition", result="ok") >= args.streams:
            break
        await asyncio.sleep(0.5)
    print(f"first conditions published after {time.monotonic() - t0:.1f}s", flush=True)
    result: dict = {}

    # phase 1: throughput
    before = stats["acked"]
    start = time.monotonic()
    until = start + args.seconds
    await asyncio.gather(*(a.closed_loop(args.batch, args.window, until) for a in agents))
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.5)
    result["throughput_events_per_s"] = (stats["acked"] - before) / elapsed
    print(f"phase 1: {stats['acked'] - before} events acknowledged in {elapsed:.1f}s: "
          f"{result['throughput_events_per_s']:.0f} events/s", flush=True)

    # phase 2: latency at --rate
    interval = args.streams * args.batch / args.rate
    victims = random.sample(range(args.streams), args.fatal)
    start = time.monotonic()
    # Every stream starts at a random moment within its first interval; the rate is counted from the end of
    # it, so the phase lasts at least that plus --seconds (10,000 streams at 20,000 events/s: a batch every
    # 10 s each, and a phase of --seconds 10 alone left no time to count in: issue 15's ZeroDivisionError).
    window = start + interval  # every stream has started sending by then
    until = window + args.seconds
    span = until - start
    fatal_times = {v: start + 1 + (span - 3) * k / args.fatal for k, v in enumerate(victims)}
    stats["window_sent"] = 0
    await asyncio.gather(*(a.paced(args.batch, interval, until, fatal_times.get(i), window)
                           for i, a in enumerate(agents)))
    result["paced_events_per_s"] = stats["window_sent"] / (until - window)
    await asyncio.sleep(2)
    fake.send("puts")
    puts = fake.recv()
    first_put: dict[str, float] = {}
    ok_puts: dict[str, int] = {}
    for path, t, status in puts:
        name = path.rsplit("/", 1)[1]
        if status == 200:
            ok_puts[name] = ok_puts.get(name, 0) + 1
            first_put.setdefault(name, t)
    lat = []
    for v in victims:
        a = agents[v]
        if a.fatal_at is not None and a.node in first_put:
            lat.append((first_put[a.node] - a.fatal_at) * 1000)
    if args.verbose:
        print("latencies ms:", " ".join(f"{x:.0f}" for x in sorted(lat)))
    result["fatal_nodes"] = len(victims)
    result["cordoned"] = len(lat)
    result["double_cordons"] = sum(1 for n, c in ok_puts.items() if c > 1)
    if lat:
        result["latency_ms_p50"] = pct(lat, 50)
        result["latency_ms_p99"] = pct(lat, 99)
        result["latency_ms_max"] = max(lat)
        result["latency_ms_mean"] = statistics.mean(lat)
    text = scrape(metrics_url)
    result["aggregator_decision_latency_mean_ms"] = 1000 * metric(
        text, "vigil_aggregator_decision_latency_seconds_sum") / max(1.0, metric(
            text, "vigil_aggregator_decision_latency_seconds_count"))
    result["aggregator_cordon_latency_le_ms"] = {
        le: metric(text, "vigil_aggregator_cordon_latency_seconds_bucket", le=le)
        for le in ("0.01", "0.025", "0.05", "0.1", "0.25", "+Inf")}
    result["aggregator_events_received"] = metric(text, "vigil_aggregator_events_received_total")
    print(f"phase 2: {result['paced_events_per_s']:.0f} events/s paced; {len(lat)}/{len(victims)} fatal nodes "
          f"cordoned; latency ms p50 {result.get('latency_ms_p50', float('nan')):.1f} "
          f"p99 {result.get('latency_ms_p99', float('nan')):.1f} max {result.get('latency_ms_max', float('nan')):.1f}",
          flush=True)
    for a in agents:
        a.call.cancel()
    for ch in channels:
        await ch.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--batch", type=int, default=20, help="events per batch")
    p.add_argument("--window", type=int, default=2, help="phase 1: batches in flight per stream")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--rate", type=float, default=20000.0, help="phase 2: events/s in total")
    p.add_argument("--fatal", type=int, default=100, help="phase 2: nodes that report a fatal event")
    p.add_argument("--channels", type=int, default=8, help="HTTP/2 connections the streams share")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--verbose", action="store_true", help="print every latency")
    args = p.parse_args()

    parent, child = mp.Pipe()
    fake = mp.get_context("fork").Process(target=fake_api, args=(child, args.streams), daemon=True)
    fake.start()
    url, kubeconfig = parent.recv()
    grpc_port, metrics_port = free_port(), free_port()
    agg = subprocess.Popen([sys.executable, "-m", "agent.aggregator.cli", "--kubeconfig", kubeconfig,
                            "--namespace", "vigil", "--identity", "bench-0", "--insecure-no-auth",
                            "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                            "--healthy-delay", "600", "--heartbeat-timeout", "600", "--log-level", "warning"],
                           cwd=ROOT)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_ready(metrics_port, 30)
        result = asyncio.run(run(args, grpc_port, metrics_url, parent))
    finally:
        agg.terminate()
        agg.wait(10)
        parent.send("stop")
        parent.recv()
        fake.join(5)
    result.update(streams=args.streams, batch=args.batch, seconds=args.seconds, rate=args.rate,
                  cpus=os.cpu_count())
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["throughput_events_per_s"] >= 20000 and result.get("latency_ms_p99", 1e9) < 100
    print("targets (>= 20,000 events/s, p99 < 100 ms):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
