"""Churn of agent streams that authenticate and never send a Hello (issue 12 #19), against a real aggregator.

    .venv/bin/python bench/hello_churn.py [--silent N] [--closed N] [--concurrency C] [--hello-timeout S] [--json]

Starts the project's fake API server (agent/fakekube) with a node, its agent pod and that pod's token, and one
`vigil-aggregator serve` process (TokenReview auth, no Lease, metrics off). Then, in waves of C at once, each on
its own connection (a new channel, as an agent that reconnects): N "silent" streams that authenticate and send
nothing, each waiting until the server ends it (it must, at the Hello deadline: DEADLINE_EXCEEDED), and N
"closed" streams that connect and close at once. Prints the aggregator's RSS (VmRSS of its process) after a
warm-up, at every tenth of the run, and at the end; with --json one object (tests/aggregator/test_churn.py uses it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_aggregator(kubeconfig: str, hello_timeout: float, log_path: str) -> tuple[subprocess.Popen, int]:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "agent.aggregator.cli", "serve", "--kubeconfig", kubeconfig,
                             "--no-lease", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--namespace",
                             "vigil", "--hello-timeout", str(hello_timeout), "--log-level", "info"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in Path(log_path).read_text().splitlines():
            if "gRPC on port" in line:
                return proc, int(line.split("gRPC on port")[1].split()[0].rstrip(","))
        if proc.poll() is not None:
            raise RuntimeError(f"the aggregator exited: {Path(log_path).read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the aggregator did not start")


async def churn(port: int, token: str, silent: int, closed: int, concurrency: int, pid: int,
                samples: list[tuple[int, float]], client_timeout: float = 60.0) -> dict[str, int]:
    import grpc

    from agent._proto.vigil.v1 import health_pb2_grpc as pbg

    md = (("authorization", f"Bearer {token}"),)
    codes: dict[str, int] = {}

    async def one_silent() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = pbg.HealthStub(ch).Stream(metadata=md, timeout=client_timeout)
            code = await call.code()
            details = await call.details()
            key = code.name if code != grpc.StatusCode.DEADLINE_EXCEEDED or "no Hello" in details else "CLIENT_DEADLINE"
            codes[key] = codes.get(key, 0) + 1

    async def one_closed() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = pbg.HealthStub(ch).Stream(metadata=md)
            try:
                await asyncio.wait_for(call.wait_for_connection(), 5)
            except (grpc.RpcError, asyncio.TimeoutError):
                pass
            call.cancel()

    total, done, silent_done, closed_done = silent + closed, 0, 0, 0
    step = max(1, total // 10)
    next_sample = step
    half = max(1, concurrency // 2)
    while done < total:
        n_silent = min(half if closed_done < closed else concurrency, silent - silent_done)
        n_closed = min(concurrency - n_silent, closed - closed_done)
        await asyncio.gather(*([one_silent() for _ in range(n_silent)] + [one_closed() for _ in range(n_closed)]))
        silent_done, closed_done = silent_done + n_silent, closed_done + n_closed
        done = silent_done + closed_done
        if done >= next_sample:
            samples.append((done, round(rss_mib(pid), 1)))
            next_sample += step
    return codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--silent", type=int, default=20000, help="streams that never send a Hello (default 20000)")
    p.add_argument("--closed", type=int, default=20000, help="streams closed at once (default 20000)")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--hello-timeout", type=float, default=0.5)
    p.add_argument("--warmup", type=int, default=2000, help="cycles before the first RSS reading (default 2000)")
    p.add_argument("--client-timeout", type=float, default=60.0,
                   help="how long a silent stream waits for the server to end it (default 60)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from agent.fakekube.server import FakeKube

    work = Path(tempfile.mkdtemp(prefix="vigil-churn-"))
    with FakeKube() as fk:
        fk.add_node("n1")
        fk.add_pod("vigil", "vigil-agent-n1", node_name="n1", service_account="vigil-agent")
        token = fk.issue_service_account_token("vigil", "vigil-agent", pod="vigil-agent-n1")
        kc = fk.write_kubeconfig(str(work / "kc"))
        proc, port = start_aggregator(kc, args.hello_timeout, str(work / "aggregator.log"))
        try:
            samples: list[tuple[int, float]] = []
            asyncio.run(churn(port, token, args.warmup // 2, args.warmup - args.warmup // 2, args.concurrency,
                              proc.pid, [], args.client_timeout))
            before = rss_mib(proc.pid)
            t0 = time.monotonic()
            codes = asyncio.run(churn(port, token, args.silent, args.closed, args.concurrency, proc.pid, samples,
                                      args.client_timeout))
            seconds = time.monotonic() - t0
            after = rss_mib(proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    out = {"silent": args.silent, "closed": args.closed, "concurrency": args.concurrency,
           "hello_timeout": args.hello_timeout, "silent_ended": codes, "rss_before_mib": round(before, 1),
           "rss_after_mib": round(after, 1), "samples": samples, "seconds": round(seconds, 1),
           "aggregator_alive": alive}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.silent} silent + {args.closed} closed streams in {seconds:.0f}s (waves of {args.concurrency})")
        print(f"silent streams ended: {codes}")
        print(f"aggregator RSS: {before:.1f} MiB after warm-up -> {after:.1f} MiB")
        print("samples (cycles, MiB): " + ", ".join(f"{n}: {m}" for n, m in samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
