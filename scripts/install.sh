#!/usr/bin/env bash
# Builds krust (release) and installs it as /usr/local/bin/krust. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# protoc builds the CRI and etcd clients; containerd, runc and the CNI plugins run pods.
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
# The service proxy programs nftables and flushes UDP conntrack entries.
command -v nft >/dev/null || need_apt+=(nftables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
# Local volumes: ext4 images (mkfs, e2fsck, resize2fs) on loop devices (losetup, mount).
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need_apt+=(xfsprogs)
command -v losetup >/dev/null || need_apt+=(mount)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The commit goes into `krust version` / `/version` (gitCommit), as upstream builds do.
KRUST_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || true) cargo build --release --locked -p krust
# Installed without debug info (the build keeps line tables for profiling).
command -v strip >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null; }
install -m 0755 -s "${CARGO_TARGET_DIR:-target}/release/krust" /usr/local/bin/krust
# kubectl and helm, so the README's commands work as written: the versions the tests use.
if ! command -v kubectl >/dev/null || ! command -v helm >/dev/null; then
  "$root/scripts/fetch-kubectl-helm.sh" "$root/.tools" v37
  command -v kubectl >/dev/null || install -m 0755 "$root/.tools/bin/kubectl" /usr/local/bin/kubectl
  command -v helm >/dev/null || install -m 0755 "$root/.tools/bin/helm" /usr/local/bin/helm
fi
echo "installed krust ($(du -h /usr/local/bin/krust | cut -f1)); kubectl and helm are on the PATH"
