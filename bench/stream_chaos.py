"""Chaos run of the health stream: is an event accepted an event delivered, through kill -9 of the agent and of
the aggregator leader, a full disk and a corrupt spool?

    sudo .venv/bin/python bench/stream_chaos.py [--events 12000] [--rate 100] [--json FILE]

Processes, loopback only: the project's fake Kubernetes API (in this process), two aggregator replicas electing
a leader on a Lease (real processes: the replica of agent/aggregator/app.py, plus a journal of every event it
applied, with its content), and one agent (a real process running the real StreamClient and spool) that
accepts OOM-kill-like info events at --rate and, every STATE_EVERY events, a new fatal state; after each call
returns it appends the event's id to a ledger (so an event is "accepted" once the agent has said so).

Rounds, by share of --events accepted:
  kills       0-40%  agent kill -9 every --agent-kill-every s, leader kill -9 every --leader-kill-every s
  disk full  40-60%  the spool's filesystem (a 4 MiB tmpfs) filled to the last byte by another file; the leader
                     is killed in the middle; then the file is removed (root only; skipped otherwise)
  corrupt    60-65%  the leader killed (events pile up unacknowledged during the failover), then the agent;
                     the headers of the spool file and its WAL overwritten (nothing readable), agent restarted
  kills      65-100% as the first round
Then the agent drains (no new events) and the run stops by itself (bounded by --max-seconds in any case).
Reported: accepted, delivered (applied by a leader at least once), lost (accepted, never applied), doubled
(applied more than once: redelivery, at-least-once), per kind and per round; and what the agent counted as
dropped. The one expected loss is the corrupt round's: events not yet acknowledged in the destroyed file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from benchlib import free_port  # noqa: E402 (bench/ is the script's own directory)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NODE = "chaos-node"
STATE_EVERY = 100


# -- the aggregator replica, in its own process ------------------------------------------------------------------
def replica_main(args: argparse.Namespace) -> None:
    import asyncio

    from agent.aggregator.app import Replica, ReplicaOptions
    from agent.aggregator.engine import AggregatorConfig
    from agent.aggregator.kube import Kube
    from agent.aggregator.policy import PolicyConfig
    from agent import wire

    cfg = AggregatorConfig(policy=PolicyConfig(healthy_delay=600, heartbeat_timeout=600), identity=args.identity,
                           heartbeat_seconds=1, tick_seconds=0.2)
    opts = ReplicaOptions(listen=f"127.0.0.1:{args.port}", metrics_listen=f"127.0.0.1:{args.metrics_port}",
                          namespace="vigil", lease_duration=3, renew_deadline=2, retry_period=0.3, auth=False)
    replica = Replica(cfg, opts, Kube.connect(args.kubeconfig, None))
    journal = open(args.journal, "a", buffering=1)
    seen: dict[tuple[str, int], list] = {}
    engine = replica.engine
    batch = engine.batch

    def spy(node, epoch, boot_id, events):  # noqa: ANN001 - the engine's own signature
        events = list(events)
        for e in events:
            seen[(epoch, e.seq)] = [wire.kind_from_proto(e.kind), e.check, e.entity, wire.status_from_proto(e.status)]
        return batch(node, epoch, boot_id, events)

    def applied(node, boot, epoch, seqs):  # noqa: ANN001
        journal.write(json.dumps({"epoch": epoch, "events": [seen.pop((epoch, s), None) for s in seqs]}) + "\n")
    engine.batch = spy
    engine.applied_hooks.append(applied)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, replica.request_stop)
        await replica.start()
        await replica.serve_forever()
        await replica.stop()
    asyncio.run(main())


# -- the agent, in its own process -------------------------------------------------------------------------------
def agent_main(args: argparse.Namespace) -> None:
    import logging

    from agent.base.collector import Output
    from agent.base.findings import bad
    from agent.run.runner import Result
    from agent.stream.client import StreamClient, StreamSettings
    from agent.stream.keeper import DISK

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s agent %(levelname)s %(name)s: %(message)s")
    c = StreamClient(StreamSettings(args.targets.split(","), args.spool, heartbeat_seconds=1, backoff_base=0.1,
                                    backoff_max=1.0, spool_retry_max_seconds=2.0), NODE, "boot-1")
    c.start()
    ledger = open(args.ledger, "a", buffering=1)
    keys = list(range(args.start // STATE_EVERY + (1 if args.start % STATE_EVERY else 0)))
    status = Path(args.status)
    next_at = time.monotonic()
    last_status = 0.0
    i = args.start
    while True:
        if i < args.stop:
            c.info("chaos.info", "chaos", f"ev-{i}", "OOM-killed (chaos)")
            ledger.write(f"i {i}\n")
            if i % STATE_EVERY == 0:
                keys.append(i // STATE_EVERY)
                c.observe(Result("chaos", Output(findings=[bad("chaos.fatal", "chaos", f"k{k}", "fatal (chaos)")
                                                           for k in keys]), True, 0.0))
                ledger.write(f"s {keys[-1]}\n")
            i += 1
            next_at += 1 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        else:
            time.sleep(0.2)
        if time.monotonic() - last_status > 0.5:
            m = c.metrics()
            st = {"pid": os.getpid(), "on_disk": c.keeper.mode == DISK, "next": i,
                  "pending": m.value("vigil_spool_pending_events", kind="info") +
                  m.value("vigil_spool_pending_events", kind="state"),
                  "dropped_info": m.value("vigil_spool_dropped_events_total", kind="info"),
                  "dropped_state": m.value("vigil_spool_dropped_events_total", kind="state"),
                  "faults": {r: m.value("vigil_spool_faults_total", reason=r) for r in ("full", "readonly", "corrupt", "io")},
                  "recoveries": {r: m.value("vigil_spool_recoveries_total", reason=r) for r in ("full", "corrupt")}}
            tmp = status.with_suffix(".tmp")
            tmp.write_text(json.dumps(st))
            os.replace(tmp, status)
            last_status = time.monotonic()


# -- the conductor -------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from agent.fakekube.server import FakeKube

        self.args, self.work = args, work
        self.fk = FakeKube().start()
        self.fk.add_node(NODE)
        self.kubeconfig = self.fk.write_kubeconfig(str(work / "kubeconfig"))
        self.replicas: list[dict] = [{"identity": f"agg-{n}", "port": free_port(), "metrics": free_port(),
                                      "proc": None} for n in range(2)]
        self.targets = ",".join(f"127.0.0.1:{r['port']}" for r in self.replicas)
        self.log = open(work / "processes.log", "a")
        self.spool_dir = work / "spool"
        self.tmpfs = False
        self.spool_dir.mkdir()
        if os.geteuid() == 0 and not args.no_disk_full:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.spool_dir)], check=True)
            self.tmpfs = True
        self.spool = self.spool_dir / "spool.db"
        self.ledger = work / "ledger.txt"
        self.status = work / "agent-status.json"
        self.agent = None
        self.agent_kills = self.leader_kills = 0
        self.statuses: dict[int, dict] = {}
        self.closed = False

    def py(self, *argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, *argv], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def start_replica(self, r: dict) -> None:
        r["proc"] = self.py("_replica", "--kubeconfig", self.kubeconfig, "--identity", r["identity"], "--port",
                            str(r["port"]), "--metrics-port", str(r["metrics"]), "--journal",
                            str(self.work / f"journal-{r['identity']}.jsonl"))

    def leader(self) -> dict | None:
        for r in self.replicas:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{r['metrics']}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return r
            except OSError:
                pass
        return None

    def accepted_next(self) -> int:
        """The next event id: one past the last the ledger holds."""
        last = -1
        if self.ledger.exists():
            for line in self.ledger.read_text().splitlines():
                kind, _, n = line.partition(" ")
                if kind == "i" and n.isdigit():
                    last = max(last, int(n))
        return last + 1

    def start_agent(self, stop: int | None = None) -> None:
        self.agent = self.py("_agent", "--targets", self.targets, "--spool", str(self.spool), "--ledger",
                             str(self.ledger), "--status", str(self.status), "--start", str(self.accepted_next()),
                             "--stop", str(self.args.events if stop is None else stop), "--rate", str(self.args.rate))

    def kill_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGKILL)
            self.agent.wait(10)
            self.agent_kills += 1

    def kill_leader(self) -> None:
        r = self.leader()
        if r is None:
            return
        os.kill(r["proc"].pid, signal.SIGKILL)
        r["proc"].wait(10)
        self.leader_kills += 1
        self.start_replica(r)  # back as the standby

    def agent_status(self) -> dict:
        try:
            st = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}
        self.statuses[st["pid"]] = st  # the last word of every agent process
        return st

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
        for r in self.replicas:
            if r["proc"] is not None and r["proc"].poll() is None:
                r["proc"].terminate()
                try:
                    r["proc"].wait(10)
                except subprocess.TimeoutExpired:
                    r["proc"].kill()
        self.fk.close()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.spool_dir)])


def conduct(run: Run) -> dict:
    a = run.args
    deadline = time.monotonic() + a.max_seconds
    for r in run.replicas:
        run.start_replica(r)
    while run.leader() is None:
        if time.monotonic() > deadline:
            raise SystemExit("no aggregator took the Lease")
        time.sleep(0.2)
    run.start_agent()
    bounds = {"kills": 0}
    t_agent = t_leader = time.monotonic()
    phase = "kills"
    filler: Path | None = None
    disk_full_started = 0.0

    def accepted() -> int:
        return run.accepted_next()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        run.agent_status()
        n = accepted()
        now = time.monotonic()
        if n >= a.events:
            break
        if phase == "kills" and n >= 0.4 * a.events and "disk_full" not in bounds:
            if run.tmpfs:
                phase, bounds["disk_full"], disk_full_started = "disk_full", n, now
                filler = run.spool_dir / "filler"
                with open(filler, "wb") as f:  # another tenant fills the disk to the last byte
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass
                print(f"[{n}] disk full", flush=True)
            else:
                bounds["disk_full"] = n
                print(f"[{n}] disk-full round skipped (not root)", flush=True)
        elif phase == "disk_full":
            if now - disk_full_started > 0.1 * a.events / a.rate and "disk_full_leader_killed" not in bounds:
                bounds["disk_full_leader_killed"] = n
                run.kill_leader()
                print(f"[{n}] leader killed during the full disk", flush=True)
            if n >= 0.6 * a.events:
                assert filler is not None
                filler.unlink()
                print(f"[{n}] disk freed", flush=True)
                until = time.monotonic() + 30
                while not run.agent_status().get("on_disk") and time.monotonic() < until:
                    time.sleep(0.2)
                print(f"[{accepted()}] the agent is back on its spool file: "
                      f"{bool(run.agent_status().get('on_disk'))}", flush=True)
                phase = "after_disk_full"
        elif phase in ("kills", "after_disk_full") and n >= 0.6 * a.events and "corrupt" not in bounds:
            # Worst case: events pile up unacknowledged (the leader is failing over), then the agent dies and its
            # file is destroyed (the header overwritten: SQLite cannot read a byte of it).
            run.kill_leader()
            time.sleep(1.5)
            bounds["corrupt"] = accepted()
            run.kill_agent()
            bounds["pending_in_destroyed_file"] = run.agent_status().get("pending")
            with open(run.spool, "r+b") as f:
                f.write(b"\xde\xad\xbe\xef" * 25)
            wal = Path(str(run.spool) + "-wal")
            if wal.exists():  # its WAL too (it may hold page 1, and SQLite would read the header from there)
                with open(wal, "r+b") as f:
                    f.write(b"\xde\xad\xbe\xef" * 25)
            print(f"[{bounds['corrupt']}] leader and agent killed, spool header overwritten "
                  f"(about {bounds['pending_in_destroyed_file']} events unacknowledged in it)", flush=True)
            run.start_agent()
            phase = "corrupt"
        elif phase == "corrupt" and n >= bounds["corrupt"] + 0.05 * a.events:
            bounds["kills_2"] = n
            phase = "kills"
        if phase == "kills":
            if now - t_agent >= a.agent_kill_every:
                run.kill_agent()
                run.start_agent()
                t_agent = now
                print(f"[{n}] agent killed", flush=True)
            if now - t_leader >= a.leader_kill_every:
                run.kill_leader()
                t_leader = now
                print(f"[{n}] leader killed", flush=True)
    # drain: the agent accepts nothing new and sends what it holds
    run.kill_agent()
    run.start_agent(stop=0)
    print(f"[{accepted()}] draining", flush=True)
    drainer = run.agent.pid
    while time.monotonic() < deadline:
        st = run.agent_status()
        if st.get("pid") == drainer and st.get("on_disk") and st.get("pending") == 0:
            break
        time.sleep(0.5)
    time.sleep(2)  # the last acks' journal lines
    run.agent_status()
    run.close()
    faults: dict[str, float] = {}
    for st in run.statuses.values():  # faults and recoveries are counted per agent process
        for what in ("faults", "recoveries"):
            for reason, v in st.get(what, {}).items():
                faults[f"{what}_{reason}"] = faults.get(f"{what}_{reason}", 0) + (v or 0)
    last = run.statuses.get(drainer, {})
    counted = {k: v for k, v in faults.items() if v}
    counted.update(dropped_info=last.get("dropped_info"), dropped_state=last.get("dropped_state"),
                   drained=bool(last.get("on_disk") and last.get("pending") == 0))
    return {"bounds": bounds, "agent_counted": counted}


def account(work: Path, bounds: dict) -> dict:
    accepted_info: set[int] = set()
    accepted_state: set[int] = set()
    for line in (work / "ledger.txt").read_text().splitlines():
        kind, _, n = line.partition(" ")
        if not n.isdigit():
            continue  # a line cut by kill -9
        (accepted_info if kind == "i" else accepted_state).add(int(n))
    applied_info: dict[int, int] = {}
    applied_state: dict[int, int] = {}
    unknown = 0
    for j in work.glob("journal-*.jsonl"):
        for line in j.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by kill -9
            for ev in rec["events"]:
                if ev is None:
                    unknown += 1
                    continue
                kind, check, entity, status = ev
                if check == "chaos.info":
                    k = int(entity.split("-")[1])
                    applied_info[k] = applied_info.get(k, 0) + 1
                elif check == "chaos.fatal" and status == "unhealthy":
                    k = int(entity[1:])
                    applied_state[k] = applied_state.get(k, 0) + 1

    def figures(accepted: set[int], applied: dict[int, int], lo: int = 0, hi: int | None = None) -> dict:
        acc = {n for n in accepted if n >= lo and (hi is None or n < hi)}
        got = {n: c for n, c in applied.items() if n >= lo and (hi is None or n < hi)}
        return {"accepted": len(acc), "delivered": len(acc & set(got)), "lost": len(acc - set(got)),
                "doubled": sum(1 for c in got.values() if c > 1),
                "delivered_not_in_ledger": len(set(got) - acc)}  # killed between accepting and writing the ledger
    rounds = {}
    edges = [("kills", 0), ("disk_full", bounds.get("disk_full")), ("corrupt", bounds.get("corrupt")),
             ("kills_2", bounds.get("kills_2"))]
    edges = [(name, lo) for name, lo in edges if lo is not None]
    for (name, lo), nxt in zip(edges, edges[1:] + [(None, None)]):
        rounds[name] = figures(accepted_info, applied_info, lo, nxt[1])
    lost = sorted(accepted_info - set(applied_info))
    return {"info": figures(accepted_info, applied_info), "state": figures(accepted_state, applied_state),
            "info_by_round": rounds, "lost_ids_sample": lost[:10],
            "lost_accepted_before_the_corrupt_kill": sum(1 for n in lost if n < bounds.get("corrupt", 0)),
            "unmatched_journal_events": unknown}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role")
    r = sub.add_parser("_replica")
    for k in ("--kubeconfig", "--identity", "--journal"):
        r.add_argument(k, required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--metrics-port", type=int, required=True)
    ag = sub.add_parser("_agent")
    for k in ("--targets", "--spool", "--ledger", "--status"):
        ag.add_argument(k, required=True)
    for k in ("--start", "--stop"):
        ag.add_argument(k, type=int, required=True)
    ag.add_argument("--rate", type=float, required=True)
    p.add_argument("--events", type=int, default=12000, help="info events to accept (default 12,000)")
    p.add_argument("--rate", type=float, default=100.0, help="events per second the agent accepts")
    p.add_argument("--agent-kill-every", type=float, default=7.0, metavar="S")
    p.add_argument("--leader-kill-every", type=float, default=11.0, metavar="S")
    p.add_argument("--max-seconds", type=float, default=600.0, help="hard bound of the whole run")
    p.add_argument("--no-disk-full", action="store_true", help="skip the disk-full round (it needs root)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (ledger, journals, logs)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args()
    if args.role == "_replica":
        replica_main(args)
        return 0
    if args.role == "_agent":
        agent_main(args)
        return 0
    work = Path(tempfile.mkdtemp(prefix="vigil-chaos-"))
    t0 = time.monotonic()
    run = Run(args, work)
    try:
        out = conduct(run)
    finally:
        run.close()
    result = account(work, out["bounds"])
    result.update(agent_kills=run.agent_kills, leader_kills=run.leader_kills, seconds=round(time.monotonic() - t0, 1),
                  rate=args.rate, disk_full_round=run.tmpfs, agent_counted=out["agent_counted"],
                  pending_in_destroyed_file=out["bounds"].get("pending_in_destroyed_file"), work=str(work))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["state"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
