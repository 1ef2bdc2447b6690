"""The container source's parts (the collector itself is agent/sources/containers/collector.py).

  model.py        plain data: pod identity, containers, tasks, decoded events (no gRPC)
  table.py        the live container table the event watcher keeps, with counters and recent events (no gRPC)
  events.py       containerd event envelopes -> model.RawEvent (decoded by the bare type name)
  runtime.py      containerd gRPC client: list containers and tasks, and the event watcher thread
  podresources.py kubelet PodResources v1 List client -> device allocations per container
  attribution.py  device ids -> GPUs and RDMA devices; the OCI-spec fallback; the GPU -> pod join
Modules that import grpc or the generated stubs (events, runtime, podresources) are imported only by read().
"""
