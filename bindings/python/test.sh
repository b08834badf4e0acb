#!/usr/bin/env bash
# The Python binding's checks (bindings spec): a venv in OUT_DIR/venv with this package (installed
# the way users do, `pip install ./bindings/python`), pytest, numpy and Pillow; the test suite; the
# example; OUT_DIR/python.rgb, the raw RGB8 pixels of the shared "fox" request; and
# OUT_DIR/python-edit.rgb and OUT_DIR/python-inpaint.rgb, those of tests/c/edit.c's img2img and
# inpainting requests (the same as `dg edit`'s and `dg edit --mask`'s); OUT_DIR/python-lora.rgb, the fox
# request's with the LoRA stack a:0.8 (the same as tests/c/lora.c's);
# then the platform wheel (build-wheel.sh, `make wheel`) built from DG_LIB_DIR's library, installed
# with its onnxruntime dependency in OUT_DIR/wheel-venv and run with no DG_* variable.
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

rm -f "$OUT_DIR/python.rgb" "$OUT_DIR/python-edit.rgb" "$OUT_DIR/python-inpaint.rgb" "$OUT_DIR/python-lora.rgb" \
	"$OUT_DIR/python-digits.png"
echo "python: pytest (library: $LIB_DIR)"
(cd "$HERE" && DG_LIBRARY_PATH=$LIB_DIR DG_FOX_RGB=$OUT_DIR/python.rgb DG_EDIT_RGB=$OUT_DIR/python-edit.rgb \
	DG_INPAINT_RGB=$OUT_DIR/python-inpaint.rgb DG_LORA_RGB=$OUT_DIR/python-lora.rgb \
	"$PY" -m pytest -q tests)

echo "python: example"
DG_LIBRARY_PATH=$LIB_DIR "$PY" "$HERE/examples/digits.py" --output "$OUT_DIR/python-digits.png" 2>/dev/null
"$PY" - "$OUT_DIR/python-digits.png" "$OUT_DIR/python.rgb" "$OUT_DIR/python-edit.rgb" "$OUT_DIR/python-inpaint.rgb" \
	"$OUT_DIR/python-lora.rgb" <<'PYEOF'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    assert im.format == "PNG" and im.size == (16, 16), (im.format, im.size)
for rgb in sys.argv[2:]:
    with open(rgb, "rb") as f:
        assert len(f.read()) == 64 * 64 * 3, f"{rgb} is not a 64x64 RGB8 image"
PYEOF

# The platform wheel as users get it (`make wheel`, docs/bindings.md): built from LIB_DIR's library,
# installed with its onnxruntime dependency into a venv of its own, then run with no DG_* (nor
# LD_LIBRARY_PATH) variable, so both libraries must come from the installed packages.
echo "python: platform wheel"
wheel_start=$SECONDS
command -v objdump >/dev/null && command -v strip >/dev/null || apt_install binutils
ORT_VERSION=$(sed -n 's/^ORT_VERSION := //p' "$ROOT/Makefile")
WHEEL=$(PYTHON="$PY" "$HERE/build-wheel.sh" "$LIB_DIR/libdiffgentor.so.0" "$ORT_VERSION" "$OUT_DIR/wheel")
"$PY" - "$WHEEL" "$ORT_VERSION" <<'PYEOF'
import os, platform, re, sys, zipfile
wheel, ort_version = sys.argv[1], sys.argv[2]
m = re.fullmatch(r"diffgentor-([^-]+)-py3-none-(manylinux_2_(\d+)_(\w+))\.whl", os.path.basename(wheel))
assert m and m.group(4) == platform.machine(), f"{wheel}: not a py3-none-manylinux_2_N_{platform.machine()} wheel"
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    assert "diffgentor/lib/libdiffgentor.so.0" in names, f"{wheel} does not bundle the library: {names}"
    assert z.read("diffgentor/lib/libdiffgentor.so.0")[:4] == b"\x7fELF"
    info = next(n for n in names if n.endswith(".dist-info/WHEEL"))
    meta = z.read(info.replace("/WHEEL", "/METADATA")).decode()
    tags = z.read(info).decode()
assert "Root-Is-Purelib: false" in tags and f"Tag: py3-none-{m.group(2)}" in tags, tags
assert f"Requires-Dist: onnxruntime=={ort_version}\n" in meta, "the wheel does not require the pinned onnxruntime"
PYEOF
# (grep without -q reads all of the listing: -q's early exit would break zipfile's pipe.)
"$PY" -m zipfile -l "$WHEEL" | grep ' *diffgentor/lib/libdiffgentor\.so\.0 ' >/dev/null
WHEEL_VENV=$OUT_DIR/wheel-venv
WPY=$WHEEL_VENV/bin/python
if ! "$WPY" -c "" 2>/dev/null; then
	rm -rf "$WHEEL_VENV"
	"$PYTHON" -m venv "$WHEEL_VENV"
fi
# Reused across runs, keyed by the wheel's bytes (hatchling builds are reproducible): a changed
# wheel is installed afresh, its dependencies (onnxruntime) resolved from its own metadata.
wheel_sum=$(sha256sum "$WHEEL" | cut -d' ' -f1)
if [ "$(cat "$WHEEL_VENV/.diffgentor-wheel" 2>/dev/null)" != "$wheel_sum" ]; then
	"$WPY" -m pip --disable-pip-version-check --quiet uninstall --yes diffgentor 2>/dev/null || true
	"$WPY" -m pip --disable-pip-version-check --quiet install "$WHEEL"
	echo "$wheel_sum" >"$WHEEL_VENV/.diffgentor-wheel"
fi
WHEEL_RUN=$OUT_DIR/wheel-run
rm -rf "$WHEEL_RUN" && mkdir -p "$WHEEL_RUN"
# -I and a scratch cwd: nothing from the checkout (bindings/python/src) is importable.
NO_DG_ENV=(env -u DG_LIBRARY_PATH -u DG_ORT_DYLIB_PATH -u ORT_DYLIB_PATH -u LD_LIBRARY_PATH)
(cd "$WHEEL_RUN" && "${NO_DG_ENV[@]}" "$WPY" -I "$HERE/examples/digits.py" --output example.png 2>example.log) || {
	cat "$WHEEL_RUN/example.log" >&2  # the example's error (e.g. LibraryNotFoundError and where it looked)
	exit 1
}
(cd "$WHEEL_RUN" && "${NO_DG_ENV[@]}" "$WPY" -I - "$ROOT/models/digits" example.png <<'PYEOF'
import os, struct, sys, sysconfig
import diffgentor
site = os.path.realpath(sysconfig.get_paths()["purelib"])
def size(png):  # IHDR's width and height (no Pillow in this venv)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", png[16:24])
lib = os.path.realpath(diffgentor.library_path())
assert lib == os.path.join(site, "diffgentor", "lib", "libdiffgentor.so.0"), f"loaded {lib}, not the bundled copy"
with diffgentor.Runtime() as rt, rt.load(sys.argv[1]) as pipe:
    png = pipe.generate("a handwritten digit 3", seed=3, steps=4, output="png")[0]
    with open("/proc/self/maps") as maps:  # the ONNX Runtime this process really runs on
        ort = {line.split(None, 5)[-1].strip() for line in maps if "/libonnxruntime.so" in line}
capi = os.path.join(site, "onnxruntime", "capi")
assert ort and all(os.path.dirname(os.path.realpath(p)) == capi for p in ort), f"ONNX Runtime from {ort}, not {capi}"
with open(sys.argv[2], "rb") as f:
    example = f.read()
assert size(png) == size(example) == (16, 16), (size(png), size(example))
print(f"python: wheel ok: libdiffgentor {diffgentor.library_version()} from the wheel, {os.path.basename(min(ort))} from onnxruntime/capi")
PYEOF
)
echo "python: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB) built, installed and run in $((SECONDS - wheel_start))s"

REFERENCE=$ROOT/target/c-test/out/rust.rgb
if [ -e "$REFERENCE" ]; then
	cmp "$OUT_DIR/python.rgb" "$REFERENCE" || {
		echo "python: python.rgb differs from $REFERENCE (the same request through dg generate)" >&2
		exit 1
	}
	echo "python: python.rgb == target/c-test/out/rust.rgb, byte for byte"
fi
# check_reference NAME WHAT: OUT_DIR/python-NAME.rgb equals target/c-test/out/rust-NAME.rgb (the CLI's
# pixels for the same request, written by `make c-test`) when that exists.
check_reference() {
	local reference=$ROOT/target/c-test/out/rust-$1.rgb
	[ -e "$reference" ] || return 0
	cmp "$OUT_DIR/python-$1.rgb" "$reference" || {
		echo "python: python-$1.rgb differs from $reference (the same $2 request through ${3})" >&2
		exit 1
	}
	echo "python: python-$1.rgb == target/c-test/out/rust-$1.rgb, byte for byte"
}
check_reference edit img2img "dg edit"
check_reference inpaint inpainting "dg edit --mask"
# The fox request with the LoRA stack a:0.8 (models/lora/sd_a.safetensors): tests/c/lora.c's pixels.
LORA_REFERENCE=$ROOT/target/c-test/out/native/lora/lora.rgb
if [ -e "$LORA_REFERENCE" ]; then
	cmp "$OUT_DIR/python-lora.rgb" "$LORA_REFERENCE" || {
		echo "python: python-lora.rgb differs from $LORA_REFERENCE (the same LoRA request through the C API)" >&2
		exit 1
	}
	echo "python: python-lora.rgb == target/c-test/out/native/lora/lora.rgb, byte for byte"
fi
echo "python: all checks passed in $((SECONDS - start))s; wrote $OUT_DIR/python.rgb, $OUT_DIR/python-edit.rgb," \
	"$OUT_DIR/python-inpaint.rgb and $OUT_DIR/python-lora.rgb"
