#!/usr/bin/env bash
# Builds and tests the C++ binding: ctest suite, the digits example, find_package from a
# `make install` prefix, and use from the source tree by add_subdirectory and by FetchContent
# (SOURCE_DIR, and GIT_REPOSITORY of a local file:// repo with SOURCE_SUBDIR; offline).
# usage (from the repo root): bindings/cpp/test.sh OUT_DIR
# Writes OUT_DIR/cpp.rgb: raw RGB8 of the fox request (tiny-sd, "a red fox", seed 42, 3 steps,
# euler) generated through the binding, and OUT_DIR/cpp-edit.rgb: raw RGB8 of the img2img request
# of tests/c/edit.c (init target/c-test/out/edit-init.rgb, "a red fox", seed 5, 6 steps, euler_a,
# strength 0.5) when `make c-test` has made that init image, and OUT_DIR/cpp-inpaint.rgb: the same
# request plus the mask target/c-test/out/edit-mask.rgb on models/tiny-sd-inpaint, and
# OUT_DIR/cpp-lora.rgb: the fox request with the LoRA stack a:0.8 (models/lora/sd_a.safetensors).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd -P)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"
JOBS=${JOBS:-2}
start=$(date +%s)
step() { printf '== cpp: %s\n' "$*"; }

# Tools: cmake and a C++ compiler from Debian packages when missing.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]}"
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y "${need[@]}" >/dev/null || {
        $SUDO apt-get update >/dev/null
        $SUDO apt-get install -y "${need[@]}" >/dev/null
    }
fi

# The library (make c-lib) and ONNX Runtime (make ort).
DG_LIB_DIR=${DG_LIB_DIR:-$ROOT/target/release}
DG_LIB_DIR=$(cd "$DG_LIB_DIR" && pwd)
export DG_LIB_DIR
major=$(sed -n 's/^#define DG_VERSION_MAJOR \([0-9]*\)$/\1/p' include/diffgentor.h)
for f in libdiffgentor.so "libdiffgentor.so.$major"; do
    if [ ! -e "$DG_LIB_DIR/$f" ]; then
        echo "cpp: $DG_LIB_DIR/$f is missing: run \`make c-lib\` (or set DG_LIB_DIR)" >&2
        exit 1
    fi
done
if [ -z "${DG_ORT_DYLIB_PATH:-}" ]; then
    ort=$(ls "$ROOT"/.ort/lib/libonnxruntime.so.*.*.* 2>/dev/null | sort | tail -n 1 || true)
    [ -n "$ort" ] && export DG_ORT_DYLIB_PATH=$ort
fi

# 1. Build the binding's tests and example against the source tree.
BUILD=$OUT/cpp-build
step "configure + build ($BUILD)"
cmake -S bindings/cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDIFFGENTOR_ROOT="$ROOT" \
    -DDIFFGENTOR_LIB_DIR="$DG_LIB_DIR" >"$OUT/cpp-configure.log"
cmake --build "$BUILD" -j "$JOBS" >"$OUT/cpp-build.log" || { cat "$OUT/cpp-build.log"; exit 1; }

# 2. The ctest suite (c_api_coverage included); generate_test writes the fox's pixels,
#    edit_test the img2img and inpainting pixels.
step "ctest"
rm -f "$OUT/cpp.rgb" "$OUT/cpp-edit.rgb" "$OUT/cpp-inpaint.rgb" "$OUT/cpp-lora.rgb"
(cd "$BUILD" && DG_FOX_RGB="$OUT/cpp.rgb" DG_EDIT_RGB="$OUT/cpp-edit.rgb" DG_INPAINT_RGB="$OUT/cpp-inpaint.rgb" \
    DG_LORA_RGB="$OUT/cpp-lora.rgb" ctest --output-on-failure --timeout 120)
size=$(stat -c %s "$OUT/cpp.rgb")
[ "$size" -eq $((64 * 64 * 3)) ] || { echo "cpp: $OUT/cpp.rgb has $size bytes" >&2; exit 1; }
if [ -f target/c-test/out/rust.rgb ]; then
    cmp "$OUT/cpp.rgb" target/c-test/out/rust.rgb
    step "cpp.rgb equals target/c-test/out/rust.rgb"
fi
# img2img and inpainting: edit_test writes their pixels only when it had the real init image and
# mask (`make c-test`); target/c-test/out/rust-edit.rgb and rust-inpaint.rgb are `dg edit`'s and
# `dg edit --mask`'s for the same requests.
# check_edit NAME INPUT: OUT/cpp-NAME.rgb is 64x64 RGB equal to target/c-test/out/rust-NAME.rgb.
check_edit() {
    if [ ! -f "target/c-test/out/$2" ]; then
        step "no target/c-test/out/$2 (run \`make c-test\`): $1 bytes not compared"
        return
    fi
    size=$(stat -c %s "$OUT/cpp-$1.rgb")
    [ "$size" -eq $((64 * 64 * 3)) ] ||
        { echo "cpp: $OUT/cpp-$1.rgb has $size bytes" >&2; exit 1; }
    if [ -f "target/c-test/out/rust-$1.rgb" ]; then
        cmp "$OUT/cpp-$1.rgb" "target/c-test/out/rust-$1.rgb" || {
            echo "cpp: $OUT/cpp-$1.rgb differs from target/c-test/out/rust-$1.rgb (the CLI's pixels)" >&2
            exit 1
        }
        step "cpp-$1.rgb equals target/c-test/out/rust-$1.rgb"
    fi
}
check_edit edit edit-init.rgb
check_edit inpaint edit-mask.rgb
# LoRA: lora_test's fox request with the stack a:0.8 equals tests/c/lora.c's pixels.
size=$(stat -c %s "$OUT/cpp-lora.rgb")
[ "$size" -eq $((64 * 64 * 3)) ] || { echo "cpp: $OUT/cpp-lora.rgb has $size bytes" >&2; exit 1; }
if [ -f target/c-test/out/native/lora/lora.rgb ]; then
    cmp "$OUT/cpp-lora.rgb" target/c-test/out/native/lora/lora.rgb || {
        echo "cpp: $OUT/cpp-lora.rgb differs from target/c-test/out/native/lora/lora.rgb (the C API's)" >&2
        exit 1
    }
    step "cpp-lora.rgb equals target/c-test/out/native/lora/lora.rgb"
fi

# 3. The example.
step "example digits"
"$BUILD/examples/digits" models/digits "$OUT/cpp-digit3.png" 2>/dev/null
[ "$(head -c 8 "$OUT/cpp-digit3.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
    { echo "cpp: $OUT/cpp-digit3.png is not a PNG" >&2; exit 1; }

# 4. find_package(diffgentor) from `make install`. Until make install copies the CMake package
#    and diffgentor.hpp itself, put them in the prefix here.
PREFIX=$OUT/prefix
step "make install PREFIX=$PREFIX"
rm -rf "$PREFIX"
make --no-print-directory install PREFIX="$PREFIX" >"$OUT/cpp-install.log" 2>&1 ||
    { cat "$OUT/cpp-install.log"; exit 1; }
if [ ! -f "$PREFIX/lib/cmake/diffgentor/diffgentorConfig.cmake" ]; then
    install -d "$PREFIX/lib/cmake/diffgentor"
    install -m 0644 bindings/cpp/cmake/diffgentorConfig.cmake \
        bindings/cpp/cmake/diffgentorConfigVersion.cmake "$PREFIX/lib/cmake/diffgentor/"
fi
[ -f "$PREFIX/include/diffgentor.hpp" ] ||
    install -m 0644 bindings/cpp/include/diffgentor.hpp "$PREFIX/include/diffgentor.hpp"

step "consumer: find_package from the prefix"
cmake -S bindings/cpp/tests/consumer -B "$OUT/cpp-consumer-package" -DDG_CONSUMER_MODE=package \
    -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/cpp-consumer-package.log"
cmake --build "$OUT/cpp-consumer-package" -j "$JOBS" >>"$OUT/cpp-consumer-package.log" ||
    { cat "$OUT/cpp-consumer-package.log"; exit 1; }
grep -q "from $PREFIX/lib/cmake/diffgentor" "$OUT/cpp-consumer-package.log" ||
    { echo "cpp: find_package did not use $PREFIX" >&2; exit 1; }
# No LD_LIBRARY_PATH: the imported target's RPATH must find the installed library.
if ldd "$OUT/cpp-consumer-package/consumer" | grep -q "$DG_LIB_DIR"; then
    echo "cpp: the installed consumer links the source tree's library" >&2
    exit 1
fi
"$OUT/cpp-consumer-package/consumer" models/digits "$OUT/cpp-consumer-package.png"
"$OUT/cpp-consumer-package/consumer_c"

step "consumer: add_subdirectory of the source tree"
cmake -S bindings/cpp/tests/consumer -B "$OUT/cpp-consumer-subdir" -DDG_CONSUMER_MODE=subdir \
    -DDIFFGENTOR_ROOT="$ROOT" -DDIFFGENTOR_LIB_DIR="$DG_LIB_DIR" >"$OUT/cpp-consumer-subdir.log"
cmake --build "$OUT/cpp-consumer-subdir" -j "$JOBS" >>"$OUT/cpp-consumer-subdir.log" ||
    { cat "$OUT/cpp-consumer-subdir.log"; exit 1; }
"$OUT/cpp-consumer-subdir/consumer" models/digits "$OUT/cpp-consumer-subdir.png"
cmp "$OUT/cpp-consumer-package.png" "$OUT/cpp-consumer-subdir.png"

# 5. FetchContent from a source checkout, in a consumer project written to a temp dir, offline:
#    (a) SOURCE_DIR at this checkout's bindings/cpp with the library found by default
#    (DIFFGENTOR_LIB_DIR unset: $DG_LIB_DIR, else the checkout's target/release), (b) the
#    FATAL_ERROR for a missing library, (c) GIT_REPOSITORY (a file:// repo holding a commit of this
#    working tree's bindings/cpp and include/, tagged) + SOURCE_SUBDIR bindings/cpp, against a lib
#    directory with libdiffgentor.so alone, as `cargo build --release` leaves it (no SONAME link).
FETCH=$OUT/cpp-fetch
rm -rf "$FETCH"
mkdir -p "$FETCH/src"
cp bindings/cpp/tests/consumer/main.cpp "$FETCH/src/main.cpp"
cat >"$FETCH/src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.14)
project(fetch_consumer LANGUAGES CXX)
include(FetchContent)
if(DG_GIT_REPOSITORY)
  FetchContent_Declare(diffgentor GIT_REPOSITORY "${DG_GIT_REPOSITORY}" GIT_TAG "${DG_GIT_TAG}"
                       SOURCE_SUBDIR bindings/cpp)
else()
  FetchContent_Declare(diffgentor SOURCE_DIR "${DG_CHECKOUT}/bindings/cpp")
endif()
FetchContent_MakeAvailable(diffgentor)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE diffgentor::diffgentor)
target_compile_options(consumer PRIVATE -Wall -Wextra -Werror)
CMAKE

step "consumer: FetchContent SOURCE_DIR=$ROOT/bindings/cpp"
fetch_args=()
# The default library directory is the checkout's target/release: test that default when it is
# the library under test, else pass DG_LIB_DIR's.
if [ "$DG_LIB_DIR" != "$ROOT/target/release" ]; then
    fetch_args+=(-DDIFFGENTOR_LIB_DIR="$DG_LIB_DIR")
fi
env -u DG_LIB_DIR cmake -S "$FETCH/src" -B "$FETCH/source" -DDG_CHECKOUT="$ROOT" \
    -DFETCHCONTENT_FULLY_DISCONNECTED=ON "${fetch_args[@]}" >"$FETCH/source.log" 2>&1 ||
    { cat "$FETCH/source.log"; exit 1; }
cmake --build "$FETCH/source" -j "$JOBS" >>"$FETCH/source.log" 2>&1 || { cat "$FETCH/source.log"; exit 1; }
[ -z "$(find "$FETCH/source" -name CTestTestfile.cmake -path '*_deps*' -print -quit)" ] ||
    { echo "cpp: FetchContent built the binding's own tests" >&2; exit 1; }
ldd "$FETCH/source/consumer" | grep -q "libdiffgentor.so.$major => $DG_LIB_DIR/" ||
    { ldd "$FETCH/source/consumer"; echo "cpp: FetchContent consumer does not load $DG_LIB_DIR" >&2; exit 1; }
env -u LD_LIBRARY_PATH "$FETCH/source/consumer" models/digits "$FETCH/source.png"
cmp "$OUT/cpp-consumer-package.png" "$FETCH/source.png"

step "consumer: FetchContent with no library built: FATAL_ERROR"
if cmake -S "$FETCH/src" -B "$FETCH/nolib" -DDG_CHECKOUT="$ROOT" -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
    -DDIFFGENTOR_LIB_DIR="$FETCH/nolib-dir" >"$FETCH/nolib.log" 2>&1; then
    echo "cpp: configuring without libdiffgentor.so succeeded" >&2; exit 1
fi
tr -s ' \n' ' ' <"$FETCH/nolib.log" | grep -q 'not found. Build the library in the checkout first: `make c-lib` (or `make build`, `cargo build --release`)' ||
    { cat "$FETCH/nolib.log"; echo "cpp: no FATAL_ERROR naming make build / cargo build" >&2; exit 1; }

step "consumer: FetchContent GIT_REPOSITORY file:// + SOURCE_SUBDIR bindings/cpp, lib without SONAME link"
GITREPO=$FETCH/repo
mkdir -p "$GITREPO/bindings" "$GITREPO/include" "$FETCH/cargo-only"
cp -R bindings/cpp "$GITREPO/bindings/cpp"
cp include/diffgentor.h "$GITREPO/include/"
git -C "$GITREPO" init -q
git -C "$GITREPO" add -A
git -C "$GITREPO" -c user.name=test -c user.email=test@invalid commit -q -m snapshot
git -C "$GITREPO" tag v0.0.0-test
ln -s "$DG_LIB_DIR/libdiffgentor.so" "$FETCH/cargo-only/libdiffgentor.so"
cmake -S "$FETCH/src" -B "$FETCH/git" -DDG_GIT_REPOSITORY="file://$GITREPO" -DDG_GIT_TAG=v0.0.0-test \
    -DDIFFGENTOR_LIB_DIR="$FETCH/cargo-only" >"$FETCH/git.log" 2>&1 || { cat "$FETCH/git.log"; exit 1; }
cmake --build "$FETCH/git" -j "$JOBS" >>"$FETCH/git.log" 2>&1 || { cat "$FETCH/git.log"; exit 1; }
[ -f "$FETCH/git/_deps/diffgentor-src/bindings/cpp/CMakeLists.txt" ] ||
    { echo "cpp: FetchContent did not clone into _deps/diffgentor-src" >&2; exit 1; }
env -u LD_LIBRARY_PATH "$FETCH/git/consumer" models/digits "$FETCH/git.png"
cmp "$OUT/cpp-consumer-package.png" "$FETCH/git.png"

edit_note=
[ -f "$OUT/cpp-edit.rgb" ] && edit_note=", $OUT/cpp-edit.rgb"
[ -f "$OUT/cpp-inpaint.rgb" ] && edit_note+=", $OUT/cpp-inpaint.rgb"
step "all passed in $(( $(date +%s) - start ))s; wrote $OUT/cpp.rgb$edit_note"
