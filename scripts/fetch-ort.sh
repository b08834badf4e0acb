#!/usr/bin/env bash
# Fetches libonnxruntime from the PyPI wheel (the only place this project's machines can get it) and
# unpacks the shared library into DEST/lib. Usage: scripts/fetch-ort.sh VERSION DEST [PACKAGE]
set -euo pipefail
version=$1
dest=$2
package=${3:-onnxruntime}

python=$(command -v python3 || true)
if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "fetch-ort: installing python3-pip from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
    python=$(command -v python3)
fi

wheels="$dest/wheel"
mkdir -p "$wheels" "$dest/lib"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 \
    -d "$wheels" "$package==$version"
wheel=$(ls "$wheels"/"${package//-/_}"-"$version"-*.whl | head -n 1)

"$python" - "$wheel" "$dest/lib" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            target = os.path.join(out, base)
            with z.open(name) as src, open(target + ".part", "wb") as dst:
                dst.write(src.read())
            os.replace(target + ".part", target)
            print("fetch-ort:", target)
PY
rm -rf "$wheels"
