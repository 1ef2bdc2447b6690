"""The `agent` command.

  agent [--snapshot DIR] [--listen HOST:PORT]       serve /metrics and /healthz (default port 9847)
  agent --once [--json] [-v] [--snapshot DIR]       one-shot diagnosis; exit 0/1/2 (DESIGN §4)
  agent snapshot DIR                                capture this node into the replay format
  agent demo                                        --once on the embedded fixture node, then serve it
  agent validate [--probe NAMES] [--level quick|full] [--json] [--force]
                                                    active validation (DCGM, nccl, perftest, built-in);
                                                    exit 0 pass, 1 a probe failed, 2 a probe could not run
Exit codes: 0 healthy, 1 unhealthy, 2 unknown, 64 bad usage, 78 bad configuration; and, never from a
diagnosis: 70 an internal error, 75 the listen address is in use.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from agent.sources import REGISTRY
from agent.base import logs, tools
from agent.base.collector import Context, RunMode
from agent.base.errors import error_text
from agent.base.config import (DEFAULT_PORT, Config, ConfigError, check_node_name, listen_flag, load, number_flag,
                               parse_listen)
from agent.run.loop import Agent, build_collectors, collector_schemas, run_all_once
from agent.run.report import report_json, report_table
from agent.base.findings import (EXIT_ADDRESS_IN_USE, EXIT_CONFIG, EXIT_SOFTWARE, EXIT_USAGE, FATAL, UNKNOWN,
                                 exit_code, node_status, unknown)
from agent.base.roots import Roots, merge_expectations, read_node_file
from agent.run.runner import CollectorRunner

if TYPE_CHECKING:
    from agent.run.amd_health import AmdHealthServer

log = logging.getLogger("agent")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nodes"
DEMO_NODE = "mi300x-faulty"


class UsageError(Exception):
    pass


class AddressInUse(Exception):
    """--listen (or agent.listen) names an address another process holds: exit EXIT_ADDRESS_IN_USE."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; DESIGN §4 reserves 2 for "unknown", so bad usage is 64 (EX_USAGE)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


EXAMPLES = """\
examples:
  agent --once --snapshot mi300x-faulty          diagnose a recorded node (a fixture): exits 1, unhealthy
  agent validate --probe builtin --force         run the built-in GPU probe on this (drained) node
  agent --config /etc/vigil/vigil.yaml --aggregator vigil-aggregator.vigil.svc:50051 --log-format json
                                                 serve /metrics and stream findings, logging JSON lines

exit status: 0 healthy, 1 unhealthy, 2 unknown, 64 bad usage, 78 bad configuration, 70 internal error,
75 listen address in use"""


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agent", description="Vigil GPU node health agent.",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("command", nargs="?", choices=["run", "snapshot", "demo", "validate"], default="run",
                   help="run (default): serve metrics; snapshot DIR: capture this node; demo: embedded node; "
                        "validate: run the active probes on this node")
    p.add_argument("path", nargs="?", help="snapshot: the directory to write")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    p.add_argument("--once", action="store_true", help="run every check once, print a report, exit")
    p.add_argument("--json", action="store_true", help="with --once: one JSON object instead of a table")
    p.add_argument("--verbose", "-v", action="store_true", help="with --once: list passing checks too")
    p.add_argument("--snapshot", metavar="DIR",
                   help="read the node from a snapshot directory (or a fixture name under fixtures/nodes); "
                        "validate: the GPU inventory from it (the probes still run on this machine)")
    p.add_argument("--sysfs", metavar="PATH", default=None, help="sysfs root (default /sys; /host/sys in a pod)")
    p.add_argument("--procfs", metavar="PATH", default=None, help="procfs root (default /proc)")
    p.add_argument("--listen", metavar="HOST:PORT", default=None, type=listen_flag,
                   help=f"default 0.0.0.0:{DEFAULT_PORT}")
    p.add_argument("--node-name", metavar="NAME", default=None, help="default $NODE_NAME, else the host name")
    p.add_argument("--only", metavar="NAMES", default=None,
                   help=f"comma-separated collectors to run (of {', '.join(REGISTRY)})")
    p.add_argument("--tuner-mode", choices=["enforce", "dry-run", "report"], default=None,
                   help="node tuner: write the profile (enforce), say what would change (dry-run), or only report;"
                        " default from the config")
    p.add_argument("--flows", nargs="?", type=number_flag(1, 10_000, integer=True), const=20, default=None,
                   metavar="N",
                   help="print the N (20) heaviest live TCP flows on this node, with peer class, process and "
                        "cgroup, and exit (a debug view: unlike the metrics it names peers)")
    p.add_argument("--tune", action="store_true", help="with --once: let the tuner write (--once never writes "
                   "otherwise)")
    p.add_argument("--aggregator", metavar="HOST:PORT", default=None,
                   help="stream findings to the aggregator (a Service; or replicas, comma-separated)")
    p.add_argument("--spool", metavar="PATH", default=None,
                   help="with --aggregator: the spool file on a host path (default stream.spool_path, "
                        "/var/lib/vigil/spool.db)")
    p.add_argument("--token-file", metavar="PATH", default=None,
                   help="with --aggregator: the projected ServiceAccount token (audience vigil), re-read per connect")
    p.add_argument("--tls-ca", metavar="FILE", default=None,
                   help="with --aggregator: connect over TLS, trusting this CA bundle")
    p.add_argument("--probe", metavar="NAMES", default=None,
                   help="validate: comma-separated probes (dcgm, rvs, agfhc, nccl, perftest, builtin); default: "
                        "every installed one")
    p.add_argument("--level", choices=["quick", "full"], default="quick",
                   help="validate: quick (minutes) or full (up to an hour and more: see README)")
    p.add_argument("--force", action="store_true",
                   help="validate: run even though which pod holds which GPU cannot be read (a drained node)")
    p.add_argument("--metrics-file", metavar="FILE", default=None,
                   help="validate: also write the vigil_probe_* metrics to FILE (node_exporter textfile format)")
    logs.add_flags(p)
    p.add_argument("--version", action="version", version=f"vigil agent {__version__}")
    return p


def resolve_snapshot(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        return path
    if (FIXTURES / value).is_dir():
        return FIXTURES / value
    raise UsageError(f"--snapshot: {value} is neither a directory nor a fixture under {FIXTURES}")


def check_flags(args: argparse.Namespace) -> None:
    """What argparse's types cannot say alone; each message names its flag (exit 64)."""
    if args.node_name is not None:
        try:
            check_node_name(args.node_name, "--node-name")
        except ConfigError as e:
            raise UsageError(str(e)) from None


def setup(args: argparse.Namespace) -> tuple[Config, Context]:
    config = load(args.config, collector_schemas())
    if args.snapshot:
        roots = Roots.from_snapshot(resolve_snapshot(args.snapshot))
    else:
        roots = Roots(Path(args.sysfs or "/sys"), Path(args.procfs or "/proc"))
        # A root that does not exist would read as a node without hardware: a configuration error instead.
        for flag, path in (("--sysfs", roots.sysfs), ("--procfs", roots.procfs)):
            if not path.is_dir():
                raise ConfigError(f"{flag}: {path} is not a directory")
    node_file = read_node_file(roots.snapshot / "node.json") if roots.snapshot else None
    node = args.node_name or config.agent.node_name or (node_file.node if node_file else None) or config.node_name
    logs.context(node=node)  # every JSON log line names this node
    expect = merge_expectations(config.agent.expect, node_file.expect) if node_file else config.agent.expect
    # The tuner never writes in --once unless --tune asks it to.
    mode = RunMode(once=bool(args.once), tune=bool(getattr(args, "tune", False)),
                   tuner_mode=getattr(args, "tuner_mode", None))
    ctx = Context(roots=roots, node=node, expect=expect, mode=mode)
    return config, ctx


def only(args: argparse.Namespace) -> list[str] | None:
    if not args.only:
        return None
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in REGISTRY:
            raise UsageError(f"--only: unknown collector {n!r} (known: {', '.join(REGISTRY)})")
    return names


def cmd_once(args: argparse.Namespace) -> int:
    config, ctx = setup(args)
    collectors = build_collectors(config, ctx, only(args))
    results = run_all_once([CollectorRunner(c) for c in collectors])
    for c in collectors:
        c.close()
    # A tool call still running past its deadline (the collector's fired first) or left behind by an earlier
    # one is killed now; what survives SIGKILL (stuck in the driver) outlives us, so the report names it.
    left = tools.shutdown()
    findings = [f for r in results for f in r.output.findings]
    absent = {r.collector: "; ".join(r.output.absent) for r in results if r.output.absent}
    if not findings:
        # Nothing checked is not healthy (DESIGN §0): every enabled source found nothing to look at.
        why = "; ".join(f"{name}: {text}" for name, text in absent.items()) or "no source is enabled"
        findings.append(unknown("agent.coverage", "agent", ctx.node, f"nothing was checked ({why})"))
    # Which pod holds which GPU: joined here, after both sources have read (they run concurrently).
    from agent.sources.containers.attribution import gpu_pod_rows, gpu_pod_table
    if args.json:
        extra = {"gpu_pods": [r.to_json() for r in gpu_pod_rows(ctx.facts)]} if ctx.facts.pod_devices is not None \
            else {}
        if absent:
            extra["absent"] = absent
        if left:
            extra["left_behind"] = [p.to_json() for p in left]
        print(report_json(ctx.node, findings, extra or None))
    else:
        sys.stdout.write(report_table(ctx.node, findings, args.verbose) + gpu_pod_table(ctx.facts))
        if absent:
            print("\nnot on this node: " + "; ".join(f"{name} ({text})" for name, text in absent.items()))
        # A collector that failed, or whose fatal checks could not run: what made the node unknown.
        failed = [r.collector for r in results if not r.success
                  or any(f.status == UNKNOWN and f.severity == FATAL for f in r.output.findings)]
        if failed:
            print(f"\ncollectors that failed: {', '.join(failed)}")
        if left:
            print("\nleft behind, still running after SIGKILL (stuck in the driver?):")
            for p in left:
                print(f"  {p.describe()}")
    return exit_code(node_status(findings))


def cmd_serve(args: argparse.Namespace) -> int:
    from agent.base.http import ListenError, MetricsServer
    from agent.base.memory import limit_malloc_arenas
    from agent.run.selfcheck import SelfCheck
    from agent.run.supervise import Supervisor

    limit_malloc_arenas()  # before the threads start: per-thread arenas were 9 MB of a large node's RSS
    config, ctx = setup(args)
    listen_key = "--listen" if args.listen else "agent.listen"
    host, port = parse_listen(args.listen or config.agent.listen, listen_key)
    stream = None
    sc = config.stream
    aggregator = args.aggregator or sc.aggregator
    if aggregator:  # the health stream (DESIGN §6): findings -> spool -> aggregator
        from agent.stream.client import StreamClient, StreamSettings, parse_targets, read_boot_id

        try:
            targets = parse_targets(aggregator)
        except ValueError as e:
            raise UsageError(str(e)) if args.aggregator else ConfigError(f"stream.aggregator: {e}") from None
        settings = StreamSettings(
            targets, args.spool or sc.spool_path, token_file=args.token_file or sc.token_file or None,
            tls_ca=args.tls_ca or sc.tls_ca or None, batch_size=sc.batch_size, heartbeat_seconds=sc.heartbeat_seconds,
            backoff_max=sc.backoff_max_seconds, raise_after=sc.raise_after, clear_after=sc.clear_after,
            max_events=sc.max_events, max_info=sc.max_info, max_info_bytes=sc.max_info_bytes,
            memory_max_info_bytes=sc.memory_max_info_bytes)
        stream = StreamClient(settings, ctx.node, read_boot_id(ctx.roots))
        from agent.stream.validation import StreamValidation

        # The aggregator may ask for a validation (startup taint, release gate, on demand): the same probes and
        # safety rules as `agent validate`, in a thread of their own.
        from agent.probes.settings import from_config as probe_settings
        stream.validation = StreamValidation(stream.info, probe_settings(config), ctx.node, ctx.facts)
    # Collector loops, the stream and the HTTP server are supervised: a dead thread restarts (DESIGN §0), and
    # the agent's own check reports it (agent.thread, agent.spool, agent.stream).
    supervisor = Supervisor()
    collectors = build_collectors(config, ctx, only(args))
    amd = amd_health_server(config, ctx, collectors)
    own = [s for s in (stream, amd) if s is not None]  # their findings go to the agent's own check
    collectors.append(SelfCheck(ctx, supervisor, own))
    agent = Agent(collectors, ctx.node, supervisor=supervisor)
    if amd is not None:
        from agent.run.amd_health import amd_gpu_addresses, derive

        amd.provider = lambda: derive(agent.findings(), ctx.facts.gpus, amd_gpu_addresses(ctx.roots.sysfs))

    def metrics() -> bytes:
        return agent.metrics() + b"".join(s.exposition() for s in own)
    # Bind first: a taken port must fail before any collector runs or the spool is locked.
    try:
        server = MetricsServer(host, port, metrics, agent.alive)
    except ListenError as e:
        if e.in_use:
            raise AddressInUse(f"{listen_key}: {e.address} is already in use (another agent still stopping, or "
                               f"another exporter on that port): free it or choose another with --listen") from None
        raise (UsageError if args.listen else ConfigError)(f"{listen_key}: {e}") from None
    if stream is not None:
        from agent.run.holders import gpu_holders

        stream.holders = lambda: gpu_holders(ctx.facts)  # the pods on a sick GPU, for a device drain (issue 14)
        agent.observers.append(stream.observe)  # before start(): the first cycle is reported too
        stream.open_spool()  # before the first cycle: hysteresis continues from the spool's states
    agent.start()
    if stream is not None:
        stream.start(supervisor)
    supervisor.add("http", server.serve, server.recover, stopped=lambda: server.stopped)
    if amd is not None:  # after the first cycle: the plugin never reads a table with no findings in it
        supervisor.add("amd-health", amd.serve, amd.recover, stopped=lambda: amd.stopped)
    log.info("vigil agent %s on node %s: serving http://%s:%d/metrics", __version__, ctx.node, host, server.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    supervisor.stop()
    server.stop()
    if amd is not None:
        amd.stop()
    agent.stop()  # loops first: nothing observes the stream after it closes its spool
    if stream is not None:
        stream.stop()
    for p in tools.shutdown(grace=0):  # the pod is going: end what we started, say what would not die
        log.warning("left behind at exit: %s", p.describe())
    return 0


def amd_health_server(config: Config, ctx: Context, collectors: list) -> "AmdHealthServer | None":
    """The GPU health service for AMD's device plugin (agent/run/amd_health.py), when enabled; it judges GPUs
    from the gpu collector's findings, so it needs that collector."""
    settings = config.amd_device_plugin
    if not settings.enabled:
        return None
    if not any(c.name == "gpu" for c in collectors):
        raise ConfigError("amd_device_plugin.enabled: needs the gpu collector (gpu.enabled, and gpu in --only)")
    from agent.run.amd_health import AmdHealthServer

    return AmdHealthServer(settings.socket_path, list, ctx.node)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from agent.run.snapshot import capture

    if not args.path:
        raise UsageError("snapshot: give the directory to write, e.g. agent snapshot /tmp/node-snap")
    config = load(args.config, collector_schemas())
    notes = capture(Path(args.path), args.node_name or config.node_name,
                    Path(args.sysfs or "/sys"), Path(args.procfs or "/proc"))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"snapshot written to {args.path}; replay with: agent --once --snapshot {args.path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """`agent validate`: the probes once, a table like --once's (or JSON), the same exit codes."""
    from agent.base.metrics import render
    from agent.probes.validate import names as probe_names, validate

    if args.path:
        raise UsageError(f"unexpected argument {args.path!r}")
    wanted = None
    if args.probe is not None:
        wanted = [n.strip() for n in args.probe.split(",") if n.strip()]
        if not wanted:
            raise UsageError(f"--probe: give probe names (of {', '.join(probe_names())})")
    args.once = True  # one pass: the GPU source starts no watchers
    config, ctx = setup(args)
    inventory = gpu_inventory(config, ctx)
    try:
        # Which pod holds which GPU is read by validate() itself, from the kubelet's PodResources (and
        # containerd's specs), as the containers source reads them. This command cannot see whether Vigil
        # quarantined the node (that is on the Node object, the aggregator's): never assumed, so without
        # attribution it runs only with --force (the streamed validation knows, and says so).
        from agent.probes.settings import from_config as probe_settings
        v = validate(probe_settings(config), wanted, args.level, force=args.force, node=ctx.node,
                     facts=ctx.facts, sysfs=str(ctx.roots.sysfs), procfs=str(ctx.roots.procfs),
                     inventory=inventory)
    except ValueError as e:
        raise UsageError(f"--probe: {e}") from None
    left = tools.shutdown()
    if args.metrics_file:
        tmp = f"{args.metrics_file}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(render(v.metrics()))
            os.replace(tmp, args.metrics_file)
        except OSError as e:
            raise UsageError(f"--metrics-file: cannot write {args.metrics_file}: {e.strerror or e}") from None
    if args.json:
        extra = {k: x for k, x in v.to_json().items() if k not in ("node", "status", "findings")}
        if v.absent:
            extra["absent"] = v.absent
        if left:
            extra["left_behind"] = [p.to_json() for p in left]
        print(report_json(v.node, v.findings, extra))
    else:
        sys.stdout.write(report_table(v.node, v.findings, args.verbose))
        print(f"\nvalidation {args.level}; attribution: {v.holdings}")
        if v.holdings.startswith("unknown") and not args.force:
            print("  the GPU probes were not run: which pod holds which GPU cannot be read here, and this command "
                  "cannot tell whether Vigil quarantined the node; drain it and rerun with --force, or ask the "
                  f"aggregator (vigil-aggregator validate {v.node}), which runs it on a quarantined node")
        print(f"GPUs: {gpu_summary(v.gpus)} ({v.inventory})")
        for model, floors in v.floors.items():
            print(f"  floors for {model}:" + ("" if floors else " none in the table (measured, not judged)"))
            for m, f in floors.items():
                print(f"    {m} {f['value']:g} {f['unit']}  ({f['source']})")
        for s in v.skipped:
            who = ", ".join(s["held_by"]) or "a pod"
            print(f"  skipped {s['gpu'] if s['gpu'] != 'all' else 'every GPU'} for {s['probe']}: held by {who}"
                  + (f" ({s['why']})" if s["gpu"] == "all" else ""))
        for r in v.results:
            if r.status != "unavailable":
                took = f" in {r.duration:.1f}s" if r.duration is not None else ""
                print(f"  {r.name}: {r.status}{took}" + (f"  ({r.command})" if r.command else ""))
        if v.absent:
            print("not on this node: " + "; ".join(f"{n} ({a})" for n, a in v.absent.items()))
        if left:
            print("\nleft behind, still running after SIGKILL (stuck in the driver?):")
            for p in left:
                print(f"  {p.describe()}")
    return v.exit_code()


def gpu_inventory(config: Config, ctx: Context) -> str:
    """The GPU source read once into ctx.facts.gpus (index, model, UUID, PCI address: the floors and the
    PodResources join need them), as the running agent's facts have them; returns where they came from, or
    "unknown: WHY" when GPUs are there but could not be read."""
    collectors = build_collectors(config, ctx, ["gpu"])
    if not collectors:
        return "unknown: the GPU source is disabled (gpu.enabled)"
    try:
        readings = collectors[0].read()
    except Exception as e:  # noqa: BLE001 - as a failed collector cycle: the models are unknown
        return f"unknown: the GPU source failed ({error_text(e)})"
    finally:
        collectors[0].close()
    where = ", ".join(dict.fromkeys(inv.backend for inv in readings.inventories))
    if readings.unavailable:
        return "unknown: " + "; ".join(f"{vendor}: {why}" for vendor, why in sorted(readings.unavailable.items()))
    if not readings.gpus:
        return "none found" + (f" by {where}" if where else " (no GPU on the PCI bus)")
    return f"read by {where}" + (f" from the snapshot {ctx.roots.snapshot}" if ctx.roots.snapshot else "")


def gpu_summary(gpus: list[dict]) -> str:
    """ "8 x AMD Instinct MI300X (gpu0-gpu7)" per model; "none" when there are none."""
    by: dict[str, list[str]] = {}
    for g in gpus:
        by.setdefault(g["model"] or "unknown model", []).append(g["gpu"])
    return "; ".join(f"{len(e)} x {m} ({e[0]}-{e[-1]})" if len(e) > 1 else f"1 x {m} ({e[0]})"
                     for m, e in by.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        check_flags(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.json and not args.once:
            raise UsageError("--json only makes sense with --once")
        if args.tune and not args.once:
            raise UsageError("--tune only makes sense with --once (the running agent follows --tuner-mode)")
        if args.flows is not None:
            from agent.sources.netflow import top

            return top.main(["-n", str(args.flows)] + (["--config", args.config] if args.config else []))
        if args.command == "snapshot":
            return cmd_snapshot(args)
        if args.command == "demo":
            args.snapshot = args.snapshot or DEMO_NODE
            args.once, args.json = True, False
            code = cmd_once(args)
            print(f"\n(demo: the report above exits {code}; now serving its /metrics, Ctrl-C to stop)", flush=True)
            args.once = False
            return cmd_serve(args)
        if args.path:
            raise UsageError(f"unexpected argument {args.path!r}")
        return cmd_once(args) if args.once else cmd_serve(args)
    except UsageError as e:
        print(f"agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"agent: bad configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except FileNotFoundError as e:
        print(f"agent: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AddressInUse as e:
        print(f"agent: cannot serve: {e}", file=sys.stderr)
        return EXIT_ADDRESS_IN_USE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line, never a traceback read as "unhealthy" (exit 1)
        log.debug("internal error", exc_info=True)
        print(f"agent: internal error: {error_text(e)} (rerun with --log-level debug for the traceback)",
              file=sys.stderr)
        return EXIT_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
