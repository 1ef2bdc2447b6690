"""The `probes` config section: where the tools are, how long each may run, and the floors to judge by.

```yaml
probes:
  state_dir: /var/lib/vigil          # the lock file (one probe at a time per node) lives here
  dcgm: {path: "", quick_level: 2, full_level: 3, quick_timeout_seconds: 600, full_timeout_seconds: 3600}
  floors: {matmul_tflops: {h200: 700}}   # overrides of agent/probes/floors.py, per metric and model
```
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agent.base.config import MAX_COUNT, ConfigError, in_range

LEVELS = ("quick", "full")


@dataclass
class ToolProbeSettings:
    """One adapter's settings. `path` "" means: look the tool up on PATH by its usual name."""

    enabled: bool = True
    path: str = ""
    quick_timeout_seconds: float = 600.0
    full_timeout_seconds: float = 3600.0

    def timeout(self, level: str) -> float:
        return self.full_timeout_seconds if level == "full" else self.quick_timeout_seconds

    def check(self, prefix: str) -> None:
        pass


@dataclass
class DcgmSettings(ToolProbeSettings):
    # dcgmi diag -r: 1 deployment checks (seconds), 2 adds PCIe and memory (about 2 minutes), 3 adds stress
    # and targeted power (about 30 minutes), 4 adds memtest and the long burn (1-2 hours).
    quick_level: int = 2
    full_level: int = 3

    def level(self, level: str) -> int:
        return self.full_level if level == "full" else self.quick_level

    def check(self, prefix: str) -> None:
        for key in ("quick_level", "full_level"):
            in_range(f"{prefix}.{key}", getattr(self, key), 1, 4)


@dataclass
class NcclSettings(ToolProbeSettings):
    # all_reduce_perf message sizes: the floors are for the large-message regime (1 GiB and up).
    min_bytes: str = "1G"
    max_bytes: str = "8G"
    quick_timeout_seconds: float = 300.0
    full_timeout_seconds: float = 900.0
    iterations: int = 20

    def check(self, prefix: str) -> None:
        import re
        for key in ("min_bytes", "max_bytes"):
            if not re.fullmatch(r"[0-9]{1,12}[KMG]?", getattr(self, key)):
                raise ConfigError(f"{prefix}.{key}: expected a size such as 512M or 8G, got {getattr(self, key)!r}")
        in_range(f"{prefix}.iterations", self.iterations, 1, 10_000)


@dataclass
class PerftestSettings(ToolProbeSettings):
    quick_timeout_seconds: float = 60.0
    full_timeout_seconds: float = 300.0
    size: int = 1 << 20  # bytes per message: the bandwidth regime
    duration_seconds: float = 5.0  # ib_write_bw -D (quick); full runs four times as long

    def check(self, prefix: str) -> None:
        in_range(f"{prefix}.size", self.size, 1, 1 << 30)


@dataclass
class BuiltinSettings(ToolProbeSettings):
    """The built-in PyTorch probe: `path` is the Python interpreter that has torch ("" = this one)."""

    quick_timeout_seconds: float = 300.0
    full_timeout_seconds: float = 1200.0
    matmul_size: int = 8192  # n of the n x n x n bf16 product
    copy_bytes: int = 1 << 30  # bytes copied device to device per repetition
    peer: bool = False  # also copy between GPU pairs (NVLink/XGMI)

    def check(self, prefix: str) -> None:
        in_range(f"{prefix}.matmul_size", self.matmul_size, 16, 65536)
        in_range(f"{prefix}.copy_bytes", self.copy_bytes, 1 << 10, MAX_COUNT)  # 2 GiB: a C int


@dataclass
class RvsSettings(ToolProbeSettings):
    """AMD ROCm Validation Suite (`rvs`, found on PATH or at /opt/rocm/bin/rvs). Vigil writes the module conf;
    the modules per level are gst (GEMM), babel (memory), pebb (PCIe), pbqt (XGMI peers), iet (power)."""

    quick_timeout_seconds: float = 900.0
    full_timeout_seconds: float = 3600.0
    quick_modules: list[str] = field(default_factory=lambda: ["gst", "babel", "pebb"])
    full_modules: list[str] = field(default_factory=lambda: ["gst", "babel", "pebb", "pbqt", "iet"])
    gst_duration_ms: int = 15000  # per GEMM run (full: 4x), AMD's gst_single.conf value
    pebb_duration_ms: int = 10000  # per direction (full: 3x)
    pbqt_duration_ms: int = 30000
    iet_duration_ms: int = 120000
    iet_target_watts: float = 0.0  # 0: AMD's per-model target (MI300X 750 W, MI325X 1000 W)

    def check(self, prefix: str) -> None:
        from .rvs import MODULES
        for key in ("quick_modules", "full_modules"):
            for m in getattr(self, key):
                if m not in MODULES:
                    raise ConfigError(f"{prefix}.{key}: unknown rvs module {m!r} (known: {', '.join(MODULES)})")
        for key in ("gst_duration_ms", "pebb_duration_ms", "pbqt_duration_ms", "iet_duration_ms"):
            in_range(f"{prefix}.{key}", getattr(self, key), 1000, 3_600_000)
        in_range(f"{prefix}.iet_target_watts", self.iet_target_watts, 0, 5000)


@dataclass
class AgfhcSettings(ToolProbeSettings):
    """AMD GPU Field Health Check (`agfhc`, found on PATH or at /opt/amd/agfhc/agfhc): a recipe per level.
    all_lvl1 is the short all-subsystem recipe AMD's own harness runs (ROCm/cvs agfhc_cvs.py, 30 min
    deadline); all_lvl5 the ~2 h one AMD's acceptance guide requires (system-validation.md, "Minimum Required
    AGFHC Tests"; cvs csp_qual_agfhc.py gives it 3 h)."""

    quick_recipe: str = "all_lvl1"
    full_recipe: str = "all_lvl5"
    quick_timeout_seconds: float = 1800.0
    full_timeout_seconds: float = 10800.0

    def recipe(self, level: str) -> str:
        return self.full_recipe if level == "full" else self.quick_recipe

    def check(self, prefix: str) -> None:
        import re
        for key in ("quick_recipe", "full_recipe"):
            # a recipe name (hbm_lvl5), with AGFHC's options (hbm_lvl5:i=4), or a recipe file's path
            if not re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./:=,-]{0,199}", getattr(self, key)):
                raise ConfigError(f"{prefix}.{key}: expected an AGFHC recipe such as all_lvl1 or hbm_lvl5:i=4, "
                                  f"got {getattr(self, key)!r}")


@dataclass
class ProbeSettings:
    state_dir: str = "/var/lib/vigil"
    # Where attribution is read; each of the next four, when not set here, is the containers source's own
    # (containers.pod_resources_socket)
    podresources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    podresources_timeout_seconds: float = 5.0  # also containerd's; unset: containers.rpc_timeout_seconds
    # Which containers hold a GPU when PodResources cannot say (or beside it): their OCI specs, from containerd
    # ("" to not ask containerd; unset: containers.socket)
    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespaces: list[str] = field(default_factory=lambda: ["k8s.io"])  # unset: containers.namespaces
    max_output_bytes: int = 16 * 1024 * 1024
    dcgm: DcgmSettings = field(default_factory=DcgmSettings)
    nccl: NcclSettings = field(default_factory=NcclSettings)
    perftest: PerftestSettings = field(default_factory=PerftestSettings)
    builtin: BuiltinSettings = field(default_factory=BuiltinSettings)
    rvs: RvsSettings = field(default_factory=RvsSettings)
    agfhc: AgfhcSettings = field(default_factory=AgfhcSettings)
    floors: dict[str, dict[str, float]] = field(default_factory=dict)

    def check(self, prefix: str) -> None:
        from .floors import DEFAULT_FLOORS
        if not self.state_dir:
            raise ConfigError(f"{prefix}.state_dir: must name a directory")
        in_range(f"{prefix}.max_output_bytes", self.max_output_bytes, 4096, 1 << 30)
        for metric, models in self.floors.items():
            if metric not in DEFAULT_FLOORS:
                raise ConfigError(f"{prefix}.floors.{metric}: unknown metric (known: {', '.join(DEFAULT_FLOORS)})")
            for model, value in models.items():
                if not value > 0:
                    raise ConfigError(f"{prefix}.floors.{metric}.{model}: must be > 0, got {value}")

    def adapter(self, name: str) -> ToolProbeSettings:
        return getattr(self, name)


# probes key -> the containers source's key it defaults to (agent/sources/containers/collector.py)
FROM_CONTAINERS = {"podresources_socket": "pod_resources_socket", "containerd_socket": "socket",
                   "containerd_namespaces": "namespaces", "podresources_timeout_seconds": "rpc_timeout_seconds"}


def with_containers(probes: ProbeSettings, containers: object | None) -> ProbeSettings:
    """`probes` with each attribution key the config file did not set taken from the containers source's
    settings (a copy): an operator who moved the kubelet or containerd socket for that source moves it for
    the probes' safety check too, rather than leaving validation unable to see who holds a GPU."""
    import copy
    from agent.base.config import given
    out = copy.copy(probes)  # keeps which keys were given
    if containers is None:
        return out
    mine = given(probes)
    for key, theirs in FROM_CONTAINERS.items():
        if key not in mine and hasattr(containers, theirs):
            setattr(out, key, copy.deepcopy(getattr(containers, theirs)))
    return out


def from_config(config: object) -> ProbeSettings:
    """The `probes` section of a loaded Config, attribution defaulted from its `containers` section."""
    return with_containers(config.section("probes"), getattr(config, "sections", {}).get("containers"))
