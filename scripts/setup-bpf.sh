#!/usr/bin/env bash
# BCC set-up for the netflow source (run by install-deps.sh; idempotent; exits 0 when already set up).
#
# Debian ships kernel headers split in two packages (linux-headers-<ver>-cloud-amd64 and -common). A kernel
# without its own headers package (this VM runs 6.18; Debian's cloud headers are 6.1) needs
#   /lib/modules/$(uname -r)/build  -> /usr/src/linux-headers-<ver>-cloud-amd64
#   /lib/modules/$(uname -r)/source -> /usr/src/linux-headers-<ver>-common
# BCC_KERNEL_SOURCE alone does not work with the split packages. bpf/tcpflow.c reads no struct through these
# headers (their offsets are wrong on a newer kernel): BCC only needs them to compile at all.
# tracefs must be mounted for tracepoints (BCC reads their formats from it).
set -euo pipefail

kver=$(uname -r)
mod="/lib/modules/$kver"

if [ ! -e "$mod/build/Makefile" ] || [ ! -e "$mod/source/Makefile" ]; then
  cloud=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$cloud" ]; then
    echo "setup-bpf: no /usr/src/linux-headers-*-cloud-amd64 (apt-get install linux-headers-cloud-amd64); skipped" >&2
  else
    common="${cloud%-cloud-amd64}-common"
    mkdir -p "$mod"
    # Replace only our own (symbolic) links; a real build tree from the kernel's package is left alone.
    if [ -L "$mod/build" ] || [ ! -e "$mod/build" ]; then ln -sfn "$cloud" "$mod/build"; fi
    if [ -d "$common" ] && { [ -L "$mod/source" ] || [ ! -e "$mod/source" ]; }; then ln -sfn "$common" "$mod/source"; fi
    echo "setup-bpf: $mod/build -> $cloud"
  fi
fi

if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || echo "setup-bpf: could not mount tracefs at /sys/kernel/tracing" >&2
fi
exit 0
