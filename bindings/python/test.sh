#!/usr/bin/env bash
# The Python binding's checks (bindings spec): a venv in OUT_DIR/venv with this package (installed
# the way users do, `pip install ./bindings/python`), pytest, numpy and Pillow; the test suite; the
# example; OUT_DIR/python.rgb, the raw RGB8 pixels of the shared "fox" request; and
# OUT_DIR/python-edit.rgb, those of tests/c/edit.c's img2img request (the same as `dg edit`'s).
# usage (from the repository root): bindings/python/test.sh OUT_DIR
# env: DG_LIB_DIR (default $PWD/target/release), DG_ORT_DYLIB_PATH (default .ort/lib's copy),
#      PYTHON (default python3).
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: bindings/python/test.sh OUT_DIR" >&2
	exit 2
fi
start=$SECONDS
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/bindings/python
mkdir -p "$1"
OUT_DIR=$(cd "$1" && pwd)
LIB_DIR=${DG_LIB_DIR:-$PWD/target/release}
if [ ! -e "$LIB_DIR/libdiffgentor.so.0" ] && [ ! -e "$LIB_DIR/libdiffgentor.so" ]; then
	echo "python: no libdiffgentor.so(.0) in $LIB_DIR (run \`make c-lib\` or set DG_LIB_DIR)" >&2
	exit 1
fi
LIB_DIR=$(cd "$LIB_DIR" && pwd)
if [ -z "${DG_ORT_DYLIB_PATH:-}" ]; then
	for f in "$ROOT"/.ort/lib/libonnxruntime.so.*.*; do
		if [ -e "$f" ]; then export DG_ORT_DYLIB_PATH=$f; fi
	done
fi

apt_install() {
	if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
		echo "python: $* missing, and apt-get is unavailable or not root: install it by hand" >&2
		exit 1
	fi
	echo "python: installing $* with apt-get"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || apt_install python3
VENV=$OUT_DIR/venv
PY=$VENV/bin/python
if ! "$PY" -c "" 2>/dev/null; then
	rm -rf "$VENV"
	if ! "$PYTHON" -m venv "$VENV" >"$OUT_DIR/venv.log" 2>&1; then
		# Debian splits venv/ensurepip out of python3 into python3-venv.
		rm -rf "$VENV"
		apt_install python3-venv
		"$PYTHON" -m venv "$VENV"
	fi
fi
PIP=("$PY" -m pip --disable-pip-version-check --quiet)
if ! "$PY" -c "import pytest, numpy, PIL" 2>/dev/null; then
	"${PIP[@]}" install pytest numpy pillow
fi
# The binding itself, every run: a wheel built from the current tree (hatchling, build isolation).
"${PIP[@]}" install --force-reinstall --no-deps "$HERE"

rm -f "$OUT_DIR/python.rgb" "$OUT_DIR/python-edit.rgb" "$OUT_DIR/python-digits.png"
echo "python: pytest (library: $LIB_DIR)"
(cd "$HERE" && DG_LIBRARY_PATH=$LIB_DIR DG_FOX_RGB=$OUT_DIR/python.rgb DG_EDIT_RGB=$OUT_DIR/python-edit.rgb \
	"$PY" -m pytest -q tests)

echo "python: example"
DG_LIBRARY_PATH=$LIB_DIR "$PY" "$HERE/examples/digits.py" --output "$OUT_DIR/python-digits.png" 2>/dev/null
"$PY" - "$OUT_DIR/python-digits.png" "$OUT_DIR/python.rgb" "$OUT_DIR/python-edit.rgb" <<'PYEOF'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    assert im.format == "PNG" and im.size == (16, 16), (im.format, im.size)
for rgb in sys.argv[2:]:
    with open(rgb, "rb") as f:
        assert len(f.read()) == 64 * 64 * 3, f"{rgb} is not a 64x64 RGB8 image"
PYEOF

REFERENCE=$ROOT/target/c-test/out/rust.rgb
if [ -e "$REFERENCE" ]; then
	cmp "$OUT_DIR/python.rgb" "$REFERENCE" || {
		echo "python: python.rgb differs from $REFERENCE (the same request through dg generate)" >&2
		exit 1
	}
	echo "python: python.rgb == target/c-test/out/rust.rgb, byte for byte"
fi
EDIT_REFERENCE=$ROOT/target/c-test/out/rust-edit.rgb
if [ -e "$EDIT_REFERENCE" ]; then
	cmp "$OUT_DIR/python-edit.rgb" "$EDIT_REFERENCE" || {
		echo "python: python-edit.rgb differs from $EDIT_REFERENCE (the same img2img request through dg edit)" >&2
		exit 1
	}
	echo "python: python-edit.rgb == target/c-test/out/rust-edit.rgb, byte for byte"
fi
echo "python: all checks passed in $((SECONDS - start))s; wrote $OUT_DIR/python.rgb and $OUT_DIR/python-edit.rgb"
