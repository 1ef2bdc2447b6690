# Vigil images, one Dockerfile, three targets:
#
#   docker build --target agent      -t ghcr.io/vigil-dev/vigil-agent:0.1.0 .        node agent (NVIDIA: NVML via
#                                                                                   the NVIDIA Container Toolkit)
#   docker build --target agent-rocm -t ghcr.io/vigil-dev/vigil-agent-rocm:0.1.0 .   + ROCm's amd-smi (AMD nodes)
#   docker build --target aggregator -t ghcr.io/vigil-dev/vigil-aggregator:0.1.0 .   cluster aggregator, non-root
#
# buildah/podman: `buildah bud --target agent ...` (the same file). Offline, point BASE at a local image
# (tests/deploy/test_deploy_image.py builds one with mmdebstrap): --build-arg BASE=localhost/debian:bookworm-slim
#
# Python: Debian's python3 3.11 in every stage, because BCC's bindings (python3-bpfcc) are built for it. The
# virtual environment is made in the build stage and copied to the same path in the runtime stage (a venv
# hard-codes its paths), so compilers and pip never reach the runtime images.
#
# BCC and kernel headers (agent): the image carries BCC (python3-bpfcc, with its LLVM) but no kernel headers:
# headers must match the node's running kernel, which no image can know. The DaemonSet mounts the node's
# /lib/modules and /usr/src read-only; BCC compiles bpf/tcpflow.c against /lib/modules/$(uname -r)/build.
# Nodes without headers (immutable OSes: Bottlerocket, COS, Talos; or no linux-headers package installed):
# the netflow source reports itself unavailable (finding netflow.probe, unknown) and the rest of the agent runs.
# Installing the headers package on such nodes (or a CO-RE build of the probe, which needs only the kernel's
# BTF at /sys/kernel/btf/vmlinux) is the remedy; docs/deploy.md has the details.

ARG BASE=docker.io/library/debian:bookworm-slim

# --- build: virtual environments with the dependencies --------------------------------------------------------
FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The agent runs from its source tree (an editable install): the netflow probe loads bpf/tcpflow.c relative to
# the package, and `agent demo` / `--snapshot <fixture>` find fixtures/nodes beside it. BCC's bindings live in
# Debian's dist-packages: a .pth exposes only that package to the venv (as scripts/install-deps.sh does).
COPY pyproject.toml README.md /opt/vigil/src/
COPY agent /opt/vigil/src/agent
COPY bpf /opt/vigil/src/bpf
COPY fixtures/nodes /opt/vigil/src/fixtures/nodes
RUN python3 -m venv /opt/vigil/venv \
 && /opt/vigil/venv/bin/pip install -e '/opt/vigil/src[nvidia]' \
 && mkdir -p /opt/vigil/bcc-shim && ln -s /usr/lib/python3/dist-packages/bcc /opt/vigil/bcc-shim/bcc \
 && echo /opt/vigil/bcc-shim > "$(/opt/vigil/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vigil-bcc.pth"
# The aggregator: a plain (non-editable) install into its own venv; it needs no BCC, no vendor library.
RUN python3 -m venv /opt/vigil-aggregator/venv \
 && /opt/vigil-aggregator/venv/bin/pip install '/opt/vigil/src[kube]' \
 && /opt/vigil-aggregator/venv/bin/vigil-aggregator --help >/dev/null

# --- agent: root (host sysctls, host daemons' limits, root-owned sockets), capabilities from the DaemonSet ------
FROM ${BASE} AS agent
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc nvme-cli \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/vigil /opt/vigil
ENV PATH=/opt/vigil/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The port is the agent's default (agent/base/config.py DEFAULT_PORT); the DaemonSet runs it with hostNetwork.
EXPOSE 9847
ENTRYPOINT ["/opt/vigil/venv/bin/agent"]

# --- agent-rocm: the agent plus ROCm's amd-smi library and CLI (AMD Instinct nodes) ----------------------------
# From AMD's apt repository (repo.radeon.com); the amdsmi Python package comes with the library, so the two
# always match. ROCM_VERSION: the newest the fleet's amdgpu driver supports (amd-smi reads the driver through
# sysfs and ioctls that are stable across a few releases).
FROM agent AS agent-rocm
ARG ROCM_VERSION=6.4
ARG ROCM_CODENAME=jammy
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && mkdir -p /etc/apt/keyrings \
 && curl -fsSL https://repo.radeon.com/rocm/rocm.gpg.key | gpg --dearmor -o /etc/apt/keyrings/rocm.gpg \
 && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.gpg] https://repo.radeon.com/rocm/apt/${ROCM_VERSION} ${ROCM_CODENAME} main" \
      > /etc/apt/sources.list.d/rocm.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends amd-smi-lib \
 && /opt/vigil/venv/bin/pip install --no-cache-dir /opt/rocm/share/amd_smi \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/vigil/venv/bin:/opt/rocm/bin:$PATH

# --- aggregator: non-root, nothing but Python and its venv ------------------------------------------------------
FROM ${BASE} AS aggregator
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 vigil \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --shell /usr/sbin/nologin vigil
COPY --from=build /opt/vigil-aggregator /opt/vigil-aggregator
ENV PATH=/opt/vigil-aggregator/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
# gRPC for the agents; /metrics, /healthz, /readyz (the defaults of vigil-aggregator --listen, --metrics-listen).
EXPOSE 50051 9848
ENTRYPOINT ["/opt/vigil-aggregator/venv/bin/vigil-aggregator"]
CMD ["serve"]
