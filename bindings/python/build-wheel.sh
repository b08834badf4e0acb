#!/usr/bin/env bash
# Builds the Python binding's platform wheel, OUT_DIR/diffgentor-VERSION-py3-none-manylinux_2_NN_ARCH.whl:
# the binding plus LIBRARY (bundled as diffgentor/lib/libdiffgentor.so.0, debug info stripped),
# requiring onnxruntime==ORT_VERSION (the runtime the library was tested with: the Makefile's
# ORT_VERSION). `make wheel` runs it into dist/; test.sh into its own directory. Prints the wheel's path.
# usage (from anywhere): bindings/python/build-wheel.sh LIBRARY ORT_VERSION OUT_DIR
# env: PYTHON (default python3); pip fetches hatchling from PyPI (or its cache) for the isolated build.
set -euo pipefail

if [ $# -ne 3 ]; then
	echo "usage: bindings/python/build-wheel.sh LIBRARY ORT_VERSION OUT_DIR" >&2
	exit 2
fi
library=$1
ort_version=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
if [ ! -f "$library" ]; then
	echo "build-wheel: $library: no such file (run \`make c-lib\`)" >&2
	exit 1
fi
mkdir -p "$3"
out=$(cd "$3" && pwd)

# The manylinux tag is what the library needs, not what built it: the newest GLIBC_2.N symbol
# version it imports (PEP 600: manylinux_2_N runs on glibc >= 2.N). libdiffgentor links only libc,
# libm, libgcc_s and the loader (ONNX Runtime is dlopen'ed), all allowed by manylinux.
glibc_minor=$(objdump -T "$library" | grep -o 'GLIBC_2\.[0-9]*' | cut -d. -f2 | sort -n | tail -n 1)
if [ -z "$glibc_minor" ]; then
	echo "build-wheel: no GLIBC_2.N symbol versions in $library (is objdump installed? not a glibc build?)" >&2
	exit 1
fi
arch=$(uname -m)
platform=manylinux_2_$((glibc_minor < 17 ? 17 : glibc_minor))_$arch

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Line tables (profile.release debug = 1) are for local debugging; stripped, the library is ~1/3
# the size. Symbols stay, so panic backtraces still name functions.
strip --strip-debug -o "$stage/libdiffgentor.so.0" "$library"

rm -f "$out"/diffgentor-*.whl  # one wheel per directory: `pip install OUT_DIR/diffgentor-*.whl`
# hatch_build.py reads these three; without them the same build is the pure py3-none-any wheel.
DG_WHEEL_LIBRARY=$stage/libdiffgentor.so.0 DG_WHEEL_PLATFORM=$platform DG_WHEEL_ORT_VERSION=$ort_version \
	"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$out" "$HERE" >&2
wheel=$(ls "$out"/diffgentor-*-py3-none-"$platform".whl)
echo "$wheel"
