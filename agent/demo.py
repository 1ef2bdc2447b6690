"""The whole loop on one machine: a fake Kubernetes API (agent/fakekube), two aggregator replicas electing a
leader on a Lease, three agents replaying fixture nodes (one faulty) over real gRPC; a person sees the faulty
node get its VigilHealthy=False condition, the vigil.dev/unhealthy taint and a cordon, the others untouched.

    .venv/bin/python -m agent.demo [--keep] [--dry-run]

--keep leaves it running (with a kubeconfig for `kubectl --kubeconfig FILE get nodes`) until Ctrl-C.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODES = {  # node name -> fixture
    "gpu-node-1": "mi300x-rocm71-healthy",
    "gpu-node-2": "mi300x-rocm62-healthy",
    "gpu-node-3": "mi300x-faulty",
}


def table(fk) -> str:
    from .aggregator.policy import RECORD, TAINT_KEY

    rows = [("NODE", "FIXTURE", "VigilHealthy", "REASON", "TAINTED", "SCHEDULABLE", "VIGIL RECORD")]
    for name, fixture in NODES.items():
        node = fk.get("nodes", name)
        cond = next((c for c in node["status"]["conditions"] if c["type"] == "VigilHealthy"), None)
        tainted = any(t["key"] == TAINT_KEY for t in node["spec"].get("taints") or [])
        rec = (node["metadata"].get("annotations") or {}).get(RECORD)
        rows.append((name, fixture, cond["status"] if cond else "-", cond["reason"] if cond else "-",
                     "yes" if tainted else "no", "no" if node["spec"].get("unschedulable") else "yes",
                     "yes" if rec else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    p.add_argument("--dry-run", action="store_true", help="aggregators decide and report, write nothing")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)

    from .aggregator.app import Replica, ReplicaOptions, ReplicaThread
    from .aggregator.engine import AggregatorConfig
    from .aggregator.kube import Kube
    from .aggregator.policy import BudgetConfig, PolicyConfig
    from .fakekube.server import FakeKube

    work = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    fk = FakeKube().start()
    procs: list[subprocess.Popen] = []
    replicas: list[ReplicaThread] = []
    log = None
    keep_log = False  # the work directory goes on exit, unless the agents' log is what explains a failure
    try:
        print(f"fake Kubernetes API at {fk.url}")
        for name in NODES:
            fk.add_node(name)
            pod = f"vigil-agent-{name}"
            fk.add_pod("vigil", pod, node_name=name, service_account="vigil-agent")
            (work / f"{name}.token").write_text(fk.issue_service_account_token("vigil", "vigil-agent", pod=pod))
        for i in range(2):
            cfg = AggregatorConfig(policy=PolicyConfig(healthy_delay=30, heartbeat_timeout=30),
                                   budget=BudgetConfig(max_percent=50, window_seconds=3600), dry_run=args.dry_run,
                                   identity=f"vigil-aggregator-{i}", heartbeat_seconds=2)
            opts = ReplicaOptions(listen="127.0.0.1:0", namespace="vigil", lease_duration=6, renew_deadline=4,
                                  retry_period=1)
            replicas.append(ReplicaThread(Replica(cfg, opts, Kube(fk.api_client()))))
        targets = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        print(f"aggregator replicas on {targets} (one holds Lease vigil/vigil-aggregator, the other stands by)")
        log = open(work / "agents.log", "w")
        for name, fixture in NODES.items():
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--snapshot", str(ROOT / "fixtures" / "nodes" / fixture),
                 "--node-name", name, "--only", "gpu", "--listen", "127.0.0.1:0", "--aggregator", targets,
                 "--spool", str(work / f"{name}.spool"), "--token-file", str(work / f"{name}.token")],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        print(f"agents started on {', '.join(f'{n} ({f})' for n, f in NODES.items())}\n")
        deadline = time.monotonic() + args.timeout
        done = False
        while time.monotonic() < deadline:
            nodes = [fk.get("nodes", n) for n in NODES]
            reported = all(any(c["type"] == "VigilHealthy" for c in n["status"]["conditions"]) for n in nodes)
            if args.dry_run:
                done = sum(len(r.replica.engine.decisions) for r in replicas) >= len(NODES)
            else:
                done = reported and bool(fk.get("nodes", "gpu-node-3")["spec"].get("unschedulable"))
            if done:
                break
            time.sleep(0.2)
        print(table(fk))
        print()
        for e in fk.list("events", "default"):
            print(f"event  {e['type']:<8} {e['reason']:<20} node/{e['involvedObject']['name']}: {e['message']}")
        if args.dry_run:
            for r in replicas:
                for name, verdict, actions in r.replica.engine.decisions:
                    print(f"dry-run decision ({r.replica.cfg.identity}): {name} is {verdict}: {', '.join(actions)}")
        lease = fk.get("leases", "vigil-aggregator", "vigil")
        print(f"\nleader: {lease['spec']['holderIdentity']}; "
              f"writes to the API: {len(fk.requests(writes_only=True))}")
        if not done:
            keep_log = True
            print(f"the faulty node was not cordoned in time: see the agents' log, kept in {work / 'agents.log'}",
                  file=sys.stderr)
            return 1
        if args.keep:
            kc = fk.write_kubeconfig(str(work / "kubeconfig"))
            kubectl = shutil.which("kubectl") or "kubectl"
            print(f"\nrunning; try: {kubectl} --kubeconfig {kc} get nodes   (Ctrl-C to stop)")
            print(f"agents' log: {work / 'agents.log'} (removed with {work} on exit)")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for r in replicas:
            r.stop()
        fk.close()
        if log is not None:
            log.close()
        if not keep_log:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
