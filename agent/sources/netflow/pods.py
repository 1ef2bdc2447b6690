"""Which pod a socket belongs to: its cgroup (the probe reports the cgroup v2 id and path of the task that
connected or listened) matched against what the container source publishes in `ctx.facts`:

  facts.pid_pods     {pid: pod}          a container's processes (the cgroup comes from /proc/PID/cgroup)
  facts.cgroup_pods  {cgroup path: pod}  when a container source knows the cgroups itself

A pod is (namespace, pod), a (namespace, pod, container) tuple, an object with .namespace and .pod, a dict
with those keys, or "namespace/pod". No source, or no match: ("", "").
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

NO_POD = ("", "")


def as_pod(value: Any) -> tuple[str, str] | None:
    if isinstance(value, str):
        ns, sep, pod = value.partition("/")
        return (ns, pod) if sep and ns and pod else None
    if isinstance(value, Mapping):
        ns, pod = value.get("namespace"), value.get("pod")
    elif isinstance(value, (tuple, list)) and len(value) >= 2 and not hasattr(value, "pod"):
        ns, pod = value[0], value[1]
    else:
        ns, pod = getattr(value, "namespace", None), getattr(value, "pod", None)
    return (str(ns), str(pod)) if ns and pod else None


def pid_cgroup(procfs: Path, pid: int) -> str | None:
    """The cgroup v2 path of a process ("0::/path" in /proc/PID/cgroup)."""
    try:
        text = (procfs / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


class PodIndex:
    def __init__(self, procfs: Path = Path("/proc")) -> None:
        self.procfs = procfs
        self.by_path: dict[str, tuple[str, str]] = {}
        self.by_name: dict[str, tuple[str, str] | None] = {}  # last path element; None when ambiguous
        self.pods: set[tuple[str, str]] | None = None  # None: no pod source at all
        self._pid_paths: dict[int, str | None] = {}
        self._source: tuple[int, int] = (0, 0)

    def refresh(self, pid_pods: Mapping[int, Any] | None, cgroup_pods: Mapping[str, Any] | None) -> None:
        if pid_pods is None and cgroup_pods is None:
            self.by_path, self.by_name, self.pods = {}, {}, None
            return
        by_path: dict[str, tuple[str, str]] = {}
        for path, value in (cgroup_pods or {}).items():
            pod = as_pod(value)
            if pod:
                by_path[str(path).rstrip("/") or "/"] = pod
        pid_paths = {}
        for pid, value in (pid_pods or {}).items():
            pod = as_pod(value)
            if not pod:
                continue
            path = self._pid_paths.get(pid) if pid in self._pid_paths else pid_cgroup(self.procfs, int(pid))
            pid_paths[pid] = path
            if path and path != "/":
                by_path.setdefault(path, pod)
        self._pid_paths = pid_paths  # processes that left the source are forgotten
        by_name: dict[str, tuple[str, str] | None] = {}
        for path, pod in by_path.items():
            name = path.rsplit("/", 1)[-1]
            by_name[name] = pod if by_name.get(name, pod) == pod else None
        self.by_path, self.by_name = by_path, by_name
        self.pods = {as_pod(v) for v in [*(pid_pods or {}).values(), *(cgroup_pods or {}).values()]} - {None}

    def __call__(self, cgroup_id: int, path: str | None) -> tuple[str, str]:
        if not path or not self.by_path:
            return NO_POD
        p = path.rstrip("/")
        while p:
            pod = self.by_path.get(p)
            if pod:
                return pod
            p = p.rsplit("/", 1)[0]
        # The agent may see cgroup paths relative to its own cgroup namespace: match the leaf's name.
        return self.by_name.get(path.rstrip("/").rsplit("/", 1)[-1]) or NO_POD
