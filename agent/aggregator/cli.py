"""The `vigil-aggregator` command.

  vigil-aggregator [serve] [flags]          run one replica (2+ behind a Service; the Lease holder is Ready)
  vigil-aggregator cleanup [--dry-run]      remove everything Vigil added to every node (condition, taint, its
                                            own cordon, its annotations); a person's cordon stays
  vigil-aggregator reset-breaker            close the cordon budget's breaker (deliberately; no replay)
  vigil-aggregator validate NODE            ask NODE's agent (through the leader) to run its probes; print the result
  vigil-aggregator --version | COMMAND --help
Exit codes: 0 ok, 1 failed (validate: a probe failed; 2: it could not run), 64 bad usage (the message names the flag), 75 a listen address is in use,
78 bad configuration (a kubeconfig that cannot be read: the message names its path).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from agent import __version__
from agent.base import logs
from agent.base.config import listen_flag, number_flag
from agent.base.findings import EXIT_ADDRESS_IN_USE, EXIT_CONFIG, EXIT_USAGE

log = logging.getLogger("vigil-aggregator")

DAY = 86400.0
WEEK = 7 * DAY  # the longest delay or window that is still a decision, not a typo
SWITCH_INTERVAL = 0.0005  # seconds: sys.setswitchinterval for serve (see cmd_serve)
seconds = number_flag(0, WEEK, above=True)  # finite and > 0 (argparse names the flag on a bad one)


def metrics_listen_flag(text: str) -> str:
    return text if text == "off" else listen_flag(text)


def probe_names(text: str) -> tuple[str, ...]:
    from .validation import PROBE_NAMES

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected probe names (of {', '.join(PROBE_NAMES)})")
    for n in names:
        if n not in PROBE_NAMES:
            raise argparse.ArgumentTypeError(f"unknown probe {n!r} (known: {', '.join(PROBE_NAMES)})")
    return names


def count_or_percent(text: str) -> tuple[int | None, float | None]:
    """N (a count of nodes, at least 1) or P% (a share, above 0 and at most 100)."""
    try:
        if text.endswith("%"):
            v = float(text[:-1])
            if not 0 < v <= 100:
                raise ValueError
            return None, v
        n = int(text)
        if not 1 <= n <= 1_000_000:
            raise ValueError
        return n, None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count of nodes (1 or more) or a percentage such as 5%, "
                                         f"got {text!r}") from None

COMMANDS = {
    "serve": ("run one replica (the default command)",
              "Run one aggregator replica: accept the agents' health streams, judge every node, and mark an "
              "unhealthy one (condition VigilHealthy=False, taint vigil.dev/unhealthy:NoSchedule, cordon), within "
              "the cordon budget. Run 2 or more behind one Service: they elect a leader on a Lease, and only the "
              "leader is Ready, decides and writes."),
    "cleanup": ("remove everything Vigil added to every node",
                "Remove from every node what Vigil added: its VigilHealthy condition, its vigil.dev/unhealthy taint, "
                "the cordon Vigil made (a cordon a person made stays), and its annotations (the startup taint "
                "vigil.dev/unvalidated is the kubelet's and stays); and the cordon ledger "
                "from the Lease. Run it before uninstalling: conditions do not expire by themselves. With --dry-run "
                "it lists what it would remove and changes nothing."),
    "reset-breaker": ("close the cordon budget's breaker",
                      "Close the cordon budget's breaker, which opened when more nodes turned unhealthy within the "
                      "budget's window than it allows (find out why first: a fleet-wide fault, a driver push, a rule "
                      "bug). The window starts empty again. Nodes refused while it was open stay refused until they "
                      "recover: a reset does not replay old events. Prints the ledger as it was, as JSON."),
    "validate": ("ask a node's agent to run its probes now",
                 "Ask NODE's agent to run its active probes now (DESIGN §8: DCGM diagnostics, NCCL all-reduce, "
                 "ib_write_bw, the built-in GPU probe), through the leader replica, and print the result as "
                 "`agent validate` does, with its exit codes: 0 every probe that ran passed, 1 a probe failed, 2 "
                 "a probe could not run (or the validation could not be asked: the agent is not connected, too old, "
                 "validation is off on the aggregator, no answer within --timeout). The request is the Node "
                 "annotation vigil.dev/validate (so Kubernetes RBAC on nodes decides who may ask); the leader "
                 "answers in vigil.dev/v1.validation, and a pass also removes the startup taint "
                 "vigil.dev/unvalidated. The agent's safety rules apply: probes run only on GPUs no pod holds."),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def _common() -> argparse.ArgumentParser:
    """Flags every command takes: where the cluster is, where the Lease is, how much to log."""
    c = argparse.ArgumentParser(add_help=False)
    k = c.add_argument_group("Kubernetes")
    k.add_argument("--kubeconfig", metavar="FILE", help="default: in-cluster, else $KUBECONFIG or ~/.kube/config")
    k.add_argument("--context", help="kubeconfig context")
    k.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "vigil"),
                   help="where the Lease lives (default $POD_NAMESPACE or vigil)")
    k.add_argument("--lease-name", default="vigil-aggregator")
    logs.add_flags(c)
    return c


def _serve_flags(p: argparse.ArgumentParser) -> None:
    k = p.add_argument_group("replica")
    k.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's name on the Lease (default $POD_NAME, else the host name)")
    k.add_argument("--event-namespace", default="default", help="namespace of the Node Events (default default)")
    k.add_argument("--no-lease", action="store_true", help="a single replica that is always the leader")
    s = p.add_argument_group("serving")
    s.add_argument("--listen", default="0.0.0.0:50051", metavar="HOST:PORT", type=listen_flag,
                   help="gRPC (default 0.0.0.0:50051)")
    s.add_argument("--metrics-listen", default="0.0.0.0:9848", metavar="HOST:PORT", type=metrics_listen_flag,
                   help="/metrics, /healthz, /readyz (default 0.0.0.0:9848; 'off' to disable)")
    s.add_argument("--tls-cert", metavar="FILE", help="serve gRPC over TLS with this certificate (PEM)")
    s.add_argument("--tls-key", metavar="FILE")
    s.add_argument("--agent-serviceaccount", action="append", metavar="NS:NAME",
                   help="the agents' ServiceAccount (repeatable; default vigil:vigil-agent)")
    s.add_argument("--audience", default="vigil", help="the agents' token audience (default vigil)")
    s.add_argument("--insecure-no-auth", action="store_true",
                   help="trust the node an agent names (local demos and benchmarks only)")
    s.add_argument("--hello-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="end a stream that sends no Hello this long after it opened (default 10)")
    s.add_argument("--journal", metavar="FILE", help="append one JSON line per applied batch (an audit)")
    k.add_argument("--kube-qps", type=number_flag(0, 100_000, above=True), default=100.0, metavar="QPS",
                   help="client-side limit on requests to the API server; when they queue, the Lease goes first, "
                   "then quarantines, token reviews, conditions, Events last (default 100)")
    k.add_argument("--kube-burst", type=number_flag(1, 100_000, integer=True), default=200, metavar="N",
                   help="requests allowed at once above --kube-qps (default 200)")
    k.add_argument("--no-node-cache", action="store_true",
                   help="read each Node with a GET per reconcile instead of from a watch")
    d = p.add_argument_group("decisions")
    d.add_argument("--dry-run", action="store_true", help="decide and report, write nothing to nodes or Events")
    d.add_argument("--healthy-delay", type=number_flag(0, WEEK), default=300.0, metavar="SECONDS",
                   help="clean reports for this long before undoing anything (default 300)")
    d.add_argument("--heartbeat-interval", type=number_flag(1, 3600, integer=True), default=10, metavar="SECONDS",
                   help="asked of the agents (default 10)")
    d.add_argument("--heartbeat-timeout", type=number_flag(0, DAY, above=True), default=60.0, metavar="SECONDS",
                   help="no report this long: condition Unknown, AgentSilent (default 60)")
    d.add_argument("--startup-grace", type=number_flag(0, DAY), default=None, metavar="SECONDS",
                   help="after gaining the Lease, before judging silence (default and minimum: heartbeat timeout)")
    d.add_argument("--budget-nodes", type=number_flag(0, 1_000_000, integer=True), default=None, metavar="N",
                   help="cordon at most N nodes per window (with --budget-percent: the smaller)")
    d.add_argument("--budget-percent", type=number_flag(0, 100), default=None, metavar="P",
                   help="cordon at most P%% of the nodes per window")
    d.add_argument("--budget-window", type=seconds, default=3600.0, metavar="SECONDS", help="default 3600")
    r = p.add_argument_group("finer than a node (DESIGN §9)")
    r.add_argument("--device-quarantine", action="store_true",
                   help="a fault that is one GPU's (ECC, row remap, its Xids, RAS, XGMI/NVLink, a probe) taints that "
                   "device with a DeviceTaintRule (resource.k8s.io v1, else v1beta2, as discovery offers) instead of "
                   "cordoning the node; needs RBAC on resourceslices (list) and devicetaintrules")
    r.add_argument("--device-effect", choices=["NoSchedule", "NoExecute"], default="NoSchedule",
                   help="the device taint's effect (default NoSchedule; NoExecute: DRA evicts the pods using it)")
    r.add_argument("--job-signatures", action="store_true",
                   help="correlate application-class Xids across the nodes of one job before quarantining (reads the "
                   "pods of a node that reports one: RBAC to list pods and create Events in their namespaces)")
    r.add_argument("--signature-nodes", type=number_flag(2, 100_000, integer=True), default=3, metavar="K",
                   help="an application-class Xid on K nodes running GPU pods of one owner (Job, JobSet, "
                   "PyTorchJob, Deployment...) within the window is that job's signature: one Event on the owner, "
                   "no node quarantined for it (default 3; needs RBAC to list pods)")
    r.add_argument("--signature-window", type=number_flag(0, DAY, above=True), default=60.0, metavar="SECONDS",
                   help="the correlation window, and how long a fatal application-class fault waits for it before "
                   "it quarantines (default 60)")
    r.add_argument("--drain", action="append", metavar="KEY=POLICY",
                   help="opt-in partial drain after a quarantine: POLICY none (default), device (the pods holding the "
                   "sick device, by their DRA ResourceClaims) or all (every GPU pod of the node), for KEY a "
                   "namespace, * (every other one) or selector:k=v[,k=v] (pod labels); repeatable. Evicts through "
                   "the Eviction API (PodDisruptionBudgets hold); needs RBAC on pods/eviction and resourceclaims")
    r.add_argument("--drain-deadline", type=number_flag(0, DAY, above=True), default=600.0, metavar="SECONDS",
                   help="stop evicting (and report what is left) this long after a drain began (default 600)")
    d.add_argument("--resync", type=number_flag(0, DAY, above=True), default=300.0, metavar="SECONDS",
                   help="re-check every node against its verdict this often (default 300)")
    v = p.add_argument_group("active validation (DESIGN §8; README: what each probe costs)")
    v.add_argument("--validation", action="store_true",
                   help="ask agents to run their probes: a node with the startup taint vigil.dev/unvalidated loses it "
                   "on a pass; a node Vigil quarantined is released only after a pass requested once its fault "
                   "cleared (a fail keeps it, condition reason ValidationFailed); default off")
    v.add_argument("--validation-timeout", type=number_flag(0, DAY, above=True), default=1800.0, metavar="SECONDS",
                   help="no result this long after the request: unknown, never a pass (default 1800)")
    v.add_argument("--validation-probes", type=probe_names, default=(), metavar="NAMES",
                   help="comma-separated probes to ask for (dcgm, rvs, agfhc, nccl, perftest, builtin); default: "
                   "every probe the agent enables")
    v.add_argument("--validation-level", choices=["quick", "full"], default="quick",
                   help="quick (minutes) or full (up to an hour and more); default quick")
    v.add_argument("--validation-retry", type=number_flag(0, WEEK, above=True), default=900.0, metavar="SECONDS",
                   help="ask again this long after an unknown result (default 900); a fail is not asked again until "
                   "the node reboots, faults and recovers, or a person runs validate")
    v.add_argument("--validate-idle-every", type=number_flag(0, WEEK * 52, above=True), default=None,
                   metavar="SECONDS", help="also validate healthy, untainted nodes this often (off by default; a pod "
                   "holding a GPU makes the agent refuse, unknown, which changes nothing)")
    v.add_argument("--validate-idle-failure", choices=["quarantine", "report"], default="quarantine",
                   help="what a failed periodic validation does: quarantine the node (taint and cordon through the "
                   "cordon budget, until a validation passes or it reboots; default) or only report it (Event, "
                   "annotation, metric)")
    v.add_argument("--validate-idle-max", type=count_or_percent, default=(1, None), metavar="N|P%",
                   help="at most N nodes (or P%% of the connected ones) validating at once (default 1)")


EXAMPLES = """\
examples:
  vigil-aggregator serve --namespace vigil --dry-run --log-format json
                                          decide and report, write nothing to the nodes (JSON log lines)
  vigil-aggregator cleanup --dry-run      list what Vigil added to the nodes; without --dry-run, remove it
  vigil-aggregator reset-breaker          close the cordon budget's breaker once the cause is understood

`vigil-aggregator COMMAND --help` tells what each command does and takes."""


def parser() -> argparse.ArgumentParser:
    common = _common()
    p = _Parser(prog="vigil-aggregator", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Vigil aggregator: judges node health from the agents' streams and marks, taints and\n"
                "cordons unhealthy nodes, safely. Without a command it serves, with the flags below.",
                epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"vigil-aggregator {__version__}")
    _serve_flags(p)  # the default command's flags, listed in the top-level help
    sub = p.add_subparsers(dest="command", parser_class=_Parser, title="commands")
    for name, (summary, text) in COMMANDS.items():
        c = sub.add_parser(name, parents=[common], help=summary, description=text)
        if name == "serve":
            _serve_flags(c)
        elif name == "cleanup":
            c.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
        elif name == "validate":
            c.add_argument("node", metavar="NODE", help="the node to validate")
            c.add_argument("--probe", type=probe_names, default=(), metavar="NAMES",
                           help="comma-separated probes (dcgm, rvs, agfhc, nccl, perftest, builtin); default: the "
                           "agent's enabled")
            c.add_argument("--level", choices=["quick", "full"], default="quick", help="default quick")
            c.add_argument("--timeout", type=number_flag(0, DAY, above=True), default=3600.0, metavar="SECONDS",
                           help="wait this long for the result (default 3600)")
            c.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _with_command(p: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The command first (`--kubeconfig K cleanup` works as `cleanup --kubeconfig K`), `serve` when none is named."""
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
    takes_value = {o for sp in subs.values() for a in sp._actions if a.nargs != 0 for o in a.option_strings}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if arg in takes_value else 1
            continue
        if arg in subs:
            return [arg] + argv[:i] + argv[i + 1:]
        break
    if any(a in ("-h", "--help", "--version") for a in argv[:i]):
        return argv  # the top level's help (which lists the commands) or version
    return ["serve"] + argv


def _kube(args: argparse.Namespace):  # noqa: ANN202
    from .kube import Kube

    return Kube.connect(args.kubeconfig, args.context)


def _usernames(args: argparse.Namespace) -> set[str]:
    out = set()
    for item in args.agent_serviceaccount or ["vigil:vigil-agent"]:
        ns, sep, name = item.partition(":")
        if not sep or not ns or not name:
            raise ValueError(f"--agent-serviceaccount: expected NS:NAME, got {item!r}")
        out.add(f"system:serviceaccount:{ns}:{name}")
    return out


def validation_config(args: argparse.Namespace):  # noqa: ANN201
    from .validation import ValidationConfig

    nodes, percent = args.validate_idle_max
    return ValidationConfig(enabled=args.validation, timeout_seconds=args.validation_timeout,
                            probes=tuple(args.validation_probes), level=args.validation_level,
                            retry_seconds=args.validation_retry, periodic_seconds=args.validate_idle_every,
                            max_nodes=nodes, max_percent=percent, periodic_failure=args.validate_idle_failure)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Replica, ReplicaOptions
    from .gcpolicy import FreezePolicy
    from .devices import DeviceConfig
    from .drain import DrainConfig
    from .engine import AggregatorConfig
    from .policy import BudgetConfig, PolicyConfig
    from .signatures import SignatureConfig

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.heartbeat_timeout <= args.heartbeat_interval:  # every agent would read as silent between heartbeats
        raise ValueError(f"--heartbeat-timeout: must be longer than --heartbeat-interval ({args.heartbeat_interval}s),"
                         f" got {args.heartbeat_timeout:g}")
    cfg = AggregatorConfig(
        policy=PolicyConfig(args.healthy_delay, args.heartbeat_timeout, args.startup_grace),
        budget=BudgetConfig(args.budget_nodes, args.budget_percent, args.budget_window),
        devices=DeviceConfig(enabled=args.device_quarantine, effect=args.device_effect),
        signatures=SignatureConfig(args.job_signatures, args.signature_nodes, args.signature_window),
        drain=DrainConfig(DrainConfig.parse(args.drain or ()), args.drain_deadline,
                          agent_service_accounts=tuple(u.split(":", 2)[2]
                                                       for u in _usernames(args))),
        validation=validation_config(args),
        dry_run=args.dry_run, identity=args.identity, event_namespace=args.event_namespace,
        heartbeat_seconds=args.heartbeat_interval, resync_seconds=args.resync, hello_seconds=args.hello_timeout)
    tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes()) if args.tls_cert else None
    opts = ReplicaOptions(listen=args.listen,
                          metrics_listen=None if args.metrics_listen == "off" else args.metrics_listen,
                          namespace=args.namespace, lease_name=args.lease_name, use_lease=not args.no_lease,
                          auth=not args.insecure_no_auth, agent_usernames=_usernames(args), audience=args.audience,
                          tls=tls, journal=args.journal, node_cache=not args.no_node_cache,
                          kube_qps=args.kube_qps, kube_burst=int(args.kube_burst))
    replica = Replica(cfg, opts, _kube(args))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, replica.request_stop)
        await replica.start()
        # Latency: a full collection walks every object (tens of ms with 1,000 streams). Freeze what start-up made
        # and collect the young generation less often, and freeze what the streams make as they come
        # (gcpolicy.py: a 930 ms collection at 10,000 streams); measured in bench/aggregator.md.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        # The cordon path's API requests run in threads beside the loop, and at fleet size the loop (gRPC, 10,000
        # streams) holds the GIL most of the time: each of a request's GIL hand-offs (send, receive, parse) waited
        # up to the default 5 ms switch interval, several times per request, twice per cordon (Lease, Node).
        # Measured with bench/fleet_bench.py at 10,000 agents: bench/aggregator.md.
        sys.setswitchinterval(SWITCH_INTERVAL)
        stop = asyncio.Event()
        freezer = asyncio.create_task(FreezePolicy(lambda: replica.metrics.streams).run(stop))
        await replica.serve_forever()
        stop.set()
        await freezer
        await replica.stop()

    asyncio.run(main())
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove what Vigil added to every node: the condition, its taint, its own cordon, its annotations."""
    from .drain import ANNOTATION as DRAIN_RECORD
    from .kube import STRATEGIC
    from .policy import CONDITION, LEDGER, observe, released
    from .validation import ANNOTATION as VALIDATION_RECORD, PENDING as VALIDATION_PENDING
    from .validation import REQUEST as VALIDATION_REQUEST

    kube = _kube(args)
    changed = 0
    for obj in kube.list_nodes():
        name = obj["metadata"]["name"]
        obs = observe(obj)
        did = []
        if released(obj) is not None:
            if not args.dry_run:
                kube.update_node(name, released)
            did.append("taint/cordon/record")
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        if DRAIN_RECORD in ann:
            if not args.dry_run:
                kube.update_node(name, _without_drain_record)
            did.append("drain record")
        # the startup taint is the kubelet's: it stays
        if {VALIDATION_RECORD, VALIDATION_REQUEST, VALIDATION_PENDING} & set(ann):
            if not args.dry_run:
                kube.update_node(name, _without_validation)
            did.append("validation record")
        if obs.condition is not None:
            if not args.dry_run:
                kube._req("PATCH", "/api/v1/nodes/{name}/status", {"name": name},
                          {"status": {"conditions": [{"type": CONDITION, "$patch": "delete"}]}}, STRATEGIC)
            did.append("condition")
        if did:
            changed += 1
            print(f"{'would clean' if args.dry_run else 'cleaned'} {name}: {', '.join(did)}")
    changed += _cleanup_device_rules(kube, args.dry_run)
    lease = kube.get_lease(args.namespace, args.lease_name)
    if lease is not None and LEDGER in ((lease.get("metadata") or {}).get("annotations") or {}):
        if not args.dry_run:
            def drop(lease_obj: dict) -> None:
                del lease_obj["metadata"]["annotations"][LEDGER]
            _update_lease(kube, args, drop)
        print(f"{'would remove' if args.dry_run else 'removed'} the cordon ledger from lease "
              f"{args.namespace}/{args.lease_name}")
    print(f"{changed} node(s) {'to clean' if args.dry_run else 'cleaned'}")
    return 0


def _without_drain_record(node: dict) -> dict | None:
    from .drain import ANNOTATION

    ann = (node.get("metadata") or {}).get("annotations") or {}
    if ANNOTATION not in ann:
        return None
    node["metadata"]["annotations"] = {k: v for k, v in ann.items() if k != ANNOTATION}
    return node


def _without_validation(node: dict) -> dict | None:
    from .validation import ANNOTATION, PENDING, REQUEST

    ann = (node.get("metadata") or {}).get("annotations") or {}
    if not {ANNOTATION, REQUEST, PENDING} & set(ann):
        return None
    node["metadata"]["annotations"] = {k: v for k, v in ann.items() if k not in (ANNOTATION, REQUEST, PENDING)}
    return node


def _cleanup_device_rules(kube, dry_run: bool) -> int:  # noqa: ANN001
    """Vigil's DeviceTaintRules (its labels and annotation; a person's rule stays), where the server has them."""
    from .devices import DeviceApi
    from .kube import ApiError

    api = DeviceApi(kube)
    try:
        version = api.discover()
        rules = api.rules(version) if version else []
    except ApiError as e:  # 403: this aggregator was not given the RBAC (device quarantine was never enabled)
        print(f"DeviceTaintRules not listed ({e}): skipped", file=sys.stderr)
        return 0
    for rule in rules:
        if not dry_run:
            api.delete_rule(version, rule)  # type: ignore[arg-type]
        print(f"{'would delete' if dry_run else 'deleted'} DeviceTaintRule {rule['metadata']['name']}")
    return len(rules)


def _update_lease(kube, args: argparse.Namespace, change) -> dict | None:  # noqa: ANN001
    """Read-modify-write the Lease: `change(lease)` edits it in place (annotations always present)."""
    from .kube import Conflict, read_modify_write

    def modify(lease: dict) -> dict:
        lease["metadata"].setdefault("annotations", {})
        change(lease)
        return lease
    try:
        written, lease = read_modify_write(lambda: kube.get_lease(args.namespace, args.lease_name), modify,
                                           lambda body: kube.replace_lease(args.namespace, args.lease_name, body),
                                           on_retry=kube.on_retry, what="lease")
    except Conflict:
        raise RuntimeError("the Lease keeps changing; try again") from None
    return lease if written else None


def cmd_reset_breaker(args: argparse.Namespace) -> int:
    from .policy import LEDGER, Ledger, reset

    kube = _kube(args)
    before: dict = {}

    def change(lease: dict) -> None:
        ann = lease["metadata"]["annotations"]
        ledger = Ledger.from_json(ann.get(LEDGER))
        before["ledger"] = ledger
        ann[LEDGER] = reset(ledger).to_json()
    if _update_lease(kube, args, change) is None:
        print(f"no lease {args.namespace}/{args.lease_name}: nothing to reset", file=sys.stderr)
        return 1
    led = before["ledger"]
    print(json.dumps({"breakerWasOpen": led.breaker_open, "cordonsInWindow": len(led.entries),
                      "held": list(led.held), "resets": led.resets + 1}))
    return 0


def cmd_validate(args: argparse.Namespace, poll: float = 1.0) -> int:
    """Write the request annotation, wait for the leader's answer in vigil.dev/v1.validation, print it."""
    import time
    import uuid

    from .validation import ANNOTATION, FAIL, PASS, REQUEST

    kube = _kube(args)
    rid = f"cli-{uuid.uuid4().hex[:16]}"
    body = json.dumps({"id": rid, "probes": list(args.probe), "level": args.level}, separators=(",", ":"))

    def ask(node: dict) -> dict:
        node["metadata"].setdefault("annotations", {})[REQUEST] = body
        return node
    if kube.get_node(args.node) is None:
        print(f"vigil-aggregator: validate: no node {args.node!r}", file=sys.stderr)
        return 1
    kube.update_node(args.node, ask)
    deadline = time.monotonic() + args.timeout
    result = None
    while time.monotonic() < deadline:
        obj = kube.get_node(args.node) or {}
        try:
            doc = json.loads(((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION) or "{}")
        except ValueError:
            doc = {}
        if isinstance(doc, dict) and doc.get("request") == rid:
            result = doc
            break
        time.sleep(poll)
    if result is None:
        def withdraw(node: dict) -> dict | None:
            ann = node["metadata"].get("annotations") or {}
            if ann.get(REQUEST) != body:
                return None
            del ann[REQUEST]
            return node
        kube.update_node(args.node, withdraw)
        print(f"vigil-aggregator: validate: no result for {args.node} within {args.timeout:g}s (request {rid} "
              f"withdrawn): is the aggregator's leader running, with the node's agent connected to it? A validation "
              f"still running on the node reports to the aggregator when it ends", file=sys.stderr)
        return 2
    status = result.get("result")
    if args.json:
        print(json.dumps({"node": args.node, **result}, sort_keys=True))
    else:
        print(f"node {args.node}: validation {rid}: {str(status).upper()} (level {args.level}, at {result.get('time')})")
        for name, st in (result.get("probes") or {}).items():
            print(f"  {name}: {st}")
        print(result.get("message", ""))
    return 0 if status == PASS else 1 if status == FAIL else 2


def main(argv: list[str] | None = None) -> int:
    from .kube import KubeconfigError

    p = parser()
    args = p.parse_args(_with_command(p, list(sys.argv[1:] if argv is None else argv)))
    logs.setup(args.log_level, args.log_format)
    from agent.base.http import ListenError

    try:
        if args.command == "cleanup":
            return cmd_cleanup(args)
        if args.command == "reset-breaker":
            return cmd_reset_breaker(args)
        if args.command == "validate":
            return cmd_validate(args)
        return cmd_serve(args)
    except ListenError as e:
        flag = "--metrics-listen" if e.what == "metrics" else "--listen"
        print(f"vigil-aggregator: {flag}: {e}", file=sys.stderr)
        return EXIT_ADDRESS_IN_USE if e.in_use else EXIT_USAGE
    except KubeconfigError as e:
        print(f"vigil-aggregator: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as e:
        print(f"vigil-aggregator: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for an operator
        print(f"vigil-aggregator: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
