"""The netflow source's parts: TCP flows per peer class, from eBPF (BCC) and inet_diag.

  policy.py      peer classes from CIDRs and ports of interest (pure; the kernel gets the same policy as maps)
  decode.py      pure decoders of the BPF maps' entries (bpf/tcpflow.c) and the SYN/FIN payload correction
  inet_diag.py   live sockets' tcp_info over NETLINK_SOCK_DIAG (request encoder, pure decoder, exact lookups of
                 the sockets the kernel program lists, dumps per network namespace as the fallback)
  probe.py       the probe process (`python -m agent.sources.netflow.probe`): loads BPF, answers reads over a pipe
  client.py      the agent's side of that pipe: starts the probe lazily, restarts it with backoff
  accounting.py  the ledger that turns probe readings into counters that count each byte once (pure)
  pods.py        cgroup id -> (namespace, pod) from what the container source shares
  top.py         `python -m agent.sources.netflow.top`: the heaviest live flows, for a person debugging a node

`import bcc` costs about 74 MB and a loaded program 130 to 200 MB, so only probe.py imports it, in its own
process; the agent imports nothing here that pulls BCC in.
"""
