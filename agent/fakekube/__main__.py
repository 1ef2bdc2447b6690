"""Run the fake Kubernetes API server standalone (for the local demo).

    python -m agent.fakekube --port 8001 --nodes 3 --kubeconfig /tmp/fakekube.kubeconfig
    kubectl --kubeconfig /tmp/fakekube.kubeconfig get nodes

Prints the URL on the first line of stdout once it is serving (and the files below are written).
With ``--agent-pods`` it also schedules one ``vigil-agent-<node>`` pod per node (ServiceAccount
``vigil-agent`` in ``--namespace``) and issues each a projected token with audience ``vigil``;
``--state-file`` writes the URL, the admin token and those agent tokens as JSON for the other demo
processes.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .server import FakeKube


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.fakekube", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--nodes", type=int, default=3, help="how many Ready nodes to create")
    parser.add_argument("--node-prefix", default="gpu-node-")
    parser.add_argument("--kube-version", default="1.33.0")
    parser.add_argument("--namespace", default="vigil")
    parser.add_argument("--agent-pods", action="store_true", help="one vigil-agent pod and token per node")
    parser.add_argument("--admin-token", default="fakekube-admin-token")
    parser.add_argument("--require-auth", action="store_true", help="refuse requests without a known token")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a self-signed certificate")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for kubectl here")
    parser.add_argument("--state-file", help="write url, tokens and CA path here as JSON")
    args = parser.parse_args(argv)

    kube = FakeKube(args.host, args.port, kube_version=args.kube_version, namespaces=(args.namespace,),
                    admin_token=args.admin_token, require_auth=args.require_auth, tls=args.tls)
    nodes = [f"{args.node_prefix}{i}" for i in range(1, args.nodes + 1)]
    for name in nodes:
        kube.add_node(name, labels={"nvidia.com/gpu.present": "true"})
    agent_tokens = {}
    if args.agent_pods:
        for name in nodes:
            pod = f"vigil-agent-{name}"
            kube.add_pod(args.namespace, pod, node_name=name, service_account="vigil-agent",
                         labels={"app.kubernetes.io/name": "vigil-agent"})
            agent_tokens[name] = kube.issue_service_account_token(args.namespace, "vigil-agent", pod=pod,
                                                                  audiences=("vigil",))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    kube.start()
    if args.kubeconfig:
        kube.write_kubeconfig(args.kubeconfig)
    if args.state_file:
        with open(args.state_file, "w", encoding="utf-8") as fh:
            json.dump({"url": kube.url, "admin_token": kube.admin_token, "ca_cert": kube.ca_cert,
                       "nodes": nodes, "agent_tokens": agent_tokens}, fh, indent=2)
    print(f"fakekube {args.kube_version} serving {len(nodes)} nodes on {kube.url}"
          + (f" (kubeconfig: {args.kubeconfig})" if args.kubeconfig else ""), file=sys.stderr, flush=True)
    print(kube.url, flush=True)  # last: once it is printed, everything above is in place
    done.wait()
    kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
