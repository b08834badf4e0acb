#!/usr/bin/env bash
# Builds and tests the Go binding: go vet, gofmt, `go test -race` (which writes the fox request's
# raw RGB to OUT_DIR/go.rgb, tests/c/edit.c's img2img request's to OUT_DIR/go-edit.rgb, its
# inpainting request's to OUT_DIR/go-inpaint.rgb and the fox request's with the LoRA stack a:0.8 to
# OUT_DIR/go-lora.rgb, each compared with the Rust CLI's (or, for LoRA, tests/c/lora.c's) pixels
# from `make c-test` when present), the digits example, a build against an install-style prefix
# through `-tags diffgentor_pkgconfig`, and README.md's "own module" example: a throwaway module with
# the go.mod and main.go copied out of the README, built offline both ways and run, then vendored
# (go mod vendor, -mod=vendor) and built both ways again; and the same program getting the module by
# git tag (bindings/go/vX.Y.Z) from a local git repo standing in for GitHub, vendored and built.
# usage (from the repository root): bindings/go/test.sh OUT_DIR
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bindings/go/test.sh OUT_DIR" >&2
    exit 2
fi
mkdir -p "$1"
OUT_DIR=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB_DIR=${DG_LIB_DIR:-$PWD/target/release}
LIB_DIR=$(cd "$LIB_DIR" && pwd)

if ! command -v go >/dev/null; then
    echo "go-test: installing golang-go"
    apt-get install -y golang-go || { apt-get update && apt-get install -y golang-go; }
fi
if ! command -v gcc >/dev/null; then
    apt-get install -y gcc || { apt-get update && apt-get install -y gcc; }
fi
if [ ! -e "$LIB_DIR/libdiffgentor.so" ] || [ ! -e "$ROOT/include/diffgentor.h" ]; then
    echo "go-test: $LIB_DIR/libdiffgentor.so or include/diffgentor.h missing (run make c-lib)" >&2
    exit 1
fi
# Programs load the library by its SONAME; `make c-lib` makes that link next to libdiffgentor.so.
soname=$(readelf -d "$LIB_DIR/libdiffgentor.so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ -n "$soname" ] && [ ! -e "$LIB_DIR/$soname" ]; then
    echo "go-test: $LIB_DIR/$soname (the SONAME link) missing (run make c-lib)" >&2
    exit 1
fi
if [ -z "${DG_ORT_DYLIB_PATH:-}" ]; then
    for f in "$ROOT"/.ort/lib/libonnxruntime.so.*.*.*; do
        if [ -e "$f" ]; then export DG_ORT_DYLIB_PATH=$f; break; fi
    done
fi
if [ -z "${DG_ORT_DYLIB_PATH:-}" ]; then
    echo "go-test: DG_ORT_DYLIB_PATH unset and no .ort/lib/libonnxruntime.so.* (run make ort)" >&2
    exit 1
fi

# Go: standard library only, nothing fetched.
export GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=1
if [ -z "${HOME:-}" ]; then
    export GOCACHE=${GOCACHE:-$OUT_DIR/go/cache} GOPATH=${GOPATH:-$OUT_DIR/go/path}
fi
# In-tree build: header from include/, library from DG_LIB_DIR, found at run time through rpath.
export CGO_CFLAGS="-I$ROOT/include ${CGO_CFLAGS:-}"
export CGO_LDFLAGS="-L$LIB_DIR -Wl,-rpath,$LIB_DIR ${CGO_LDFLAGS:-}"

cd "$ROOT/bindings/go"
echo "go-test: $(go version)"

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
    echo "go-test: not gofmt-formatted: $unformatted" >&2
    exit 1
fi
go vet ./...

rm -f "$OUT_DIR/go.rgb" "$OUT_DIR/go-edit.rgb" "$OUT_DIR/go-inpaint.rgb" "$OUT_DIR/go-lora.rgb"
DG_FOX_RGB="$OUT_DIR/go.rgb" DG_EDIT_RGB="$OUT_DIR/go-edit.rgb" DG_INPAINT_RGB="$OUT_DIR/go-inpaint.rgb" \
    DG_LORA_RGB="$OUT_DIR/go-lora.rgb" go test -race -count=1 -v ./... 2>&1 | tee "$OUT_DIR/go-test.log" \
    | grep -E '^(--- |PASS|FAIL|ok |panic|WARNING: DATA RACE)' || true
if ! grep -q '^ok ' "$OUT_DIR/go-test.log" || grep -qE '^(FAIL|--- FAIL|WARNING: DATA RACE)' "$OUT_DIR/go-test.log"; then
    echo "go-test: go test failed (log: $OUT_DIR/go-test.log)" >&2
    exit 1
fi
# check_rgb GO_FILE RUST_FILE WHAT: 64x64 RGB, equal to the CLI's pixels for the same request
# (target/c-test/out/*.rgb, written by `make c-test`) when those exist.
check_rgb() {
    size=$(stat -c %s "$1")
    if [ "$size" -ne $((64 * 64 * 3)) ]; then
        echo "go-test: $1 has $size bytes, expected $((64 * 64 * 3))" >&2
        exit 1
    fi
    if [ -e "$ROOT/target/c-test/out/$2" ]; then
        cmp "$1" "$ROOT/target/c-test/out/$2" || {
            echo "go-test: Go $3 pixels differ from target/c-test/out/$2" >&2; exit 1; }
        echo "go-test: Go $3 pixels == target/c-test/out/$2, byte for byte"
    fi
}
check_rgb "$OUT_DIR/go.rgb" rust.rgb text-to-image
check_rgb "$OUT_DIR/go-edit.rgb" rust-edit.rgb img2img
check_rgb "$OUT_DIR/go-inpaint.rgb" rust-inpaint.rgb inpainting
# The fox request with the LoRA stack a:0.8 (models/lora/sd_a.safetensors): tests/c/lora.c's pixels.
check_rgb "$OUT_DIR/go-lora.rgb" native/lora/lora.rgb LoRA

mkdir -p "$OUT_DIR/go-bin"
go build -o "$OUT_DIR/go-bin/digits" ./examples/digits
"$OUT_DIR/go-bin/digits" -model "$ROOT/models/digits" -out "$OUT_DIR/go-digit3.png" 2>/dev/null
head -c 8 "$OUT_DIR/go-digit3.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' || {
    echo "go-test: the example did not write a PNG" >&2; exit 1; }

# Installed layout: a prefix like `make install` makes, found through pkg-config and the build tag.
if ! command -v pkg-config >/dev/null; then
    apt-get install -y pkg-config || { apt-get update && apt-get install -y pkg-config; }
fi
PREFIX=$OUT_DIR/go-prefix
rm -rf "$PREFIX"
mkdir -p "$PREFIX/lib/pkgconfig" "$PREFIX/include"
cp "$ROOT/include/diffgentor.h" "$PREFIX/include/"
cp "$LIB_DIR/libdiffgentor.so" "$PREFIX/lib/libdiffgentor.so.0"
ln -s libdiffgentor.so.0 "$PREFIX/lib/libdiffgentor.so"
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)
sed -e "s|@PREFIX@|$PREFIX|" -e "s|@VERSION@|$version|" "$ROOT/diffgentor.pc.in" \
    > "$PREFIX/lib/pkgconfig/diffgentor.pc"
env -u CGO_CFLAGS -u CGO_LDFLAGS PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" \
    go build -tags diffgentor_pkgconfig -o "$OUT_DIR/go-bin/digits-pkgconfig" ./examples/digits
LD_LIBRARY_PATH="$PREFIX/lib" "$OUT_DIR/go-bin/digits-pkgconfig" -model "$ROOT/models/digits" \
    -out "$OUT_DIR/go-digit3-pkgconfig.png" 2>/dev/null
cmp "$OUT_DIR/go-digit3.png" "$OUT_DIR/go-digit3-pkgconfig.png"

# README.md's "Using the binding from your own module": the go.mod and main.go between its
# `<!-- go-consumer: FILE -->` markers, in a module outside the tree, built offline (GOPROXY=off;
# -mod=mod would let go rewrite an incomplete go.mod, so the go.mod must come out unchanged).
readme_block() { # the first fenced block after the marker line for $1
    awk -v marker="<!-- go-consumer: $1 -->" '
        $0 == marker { armed = 1; next }
        armed && !copying && /^```/ { copying = 1; next }
        copying && /^```$/ { exit }
        copying { print }' "$ROOT/bindings/go/README.md"
}
CONSUMER=$OUT_DIR/go-consumer
rm -rf "$CONSUMER"
mkdir -p "$CONSUMER"
readme_block go.mod | sed "s|/path/to/diffgentor|$ROOT|" > "$CONSUMER/go.mod"
readme_block main.go > "$CONSUMER/main.go"
for f in go.mod main.go; do
    test -s "$CONSUMER/$f" || { echo "go-test: no $f block in bindings/go/README.md" >&2; exit 1; }
done
grep -qxF "replace github.com/diffgentor/diffgentor/bindings/go => $ROOT/bindings/go" "$CONSUMER/go.mod" || {
    echo "go-test: the README's go.mod has no replace line for /path/to/diffgentor/bindings/go" >&2; exit 1; }
cp "$CONSUMER/go.mod" "$CONSUMER/go.mod.readme"
# check_png FILE: a PNG of 16x16 pixels (models/digits), the same bytes as the digits example's
# (the README's request equals examples/digits' defaults).
check_png() {
    head -c 8 "$1" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' || {
        echo "go-test: $1 is not a PNG" >&2; exit 1; }
    dims=$(od -An -tu4 --endian=big -j 16 -N 8 "$1" | xargs)
    [ "$dims" = "16 16" ] || { echo "go-test: $1 is ${dims// /x}, expected 16x16" >&2; exit 1; }
    cmp "$1" "$OUT_DIR/go-digit3.png" || {
        echo "go-test: $1 differs from the digits example's image for the same request" >&2; exit 1; }
}
(
    cd "$CONSUMER"
    test -z "$(gofmt -l main.go)" || { echo "go-test: the README's main.go is not gofmt-formatted" >&2; exit 1; }
    # Default link flags (link.go): the tree's header and library through CGO_CFLAGS/CGO_LDFLAGS,
    # found at run time through the rpath (no LD_LIBRARY_PATH).
    export CGO_CFLAGS="-I$ROOT/include" CGO_LDFLAGS="-L$LIB_DIR -Wl,-rpath,$LIB_DIR"
    GOFLAGS=-mod=mod GOPROXY=off go vet .
    GOFLAGS=-mod=mod GOPROXY=off go build -o hello .
    cmp go.mod go.mod.readme || { echo "go-test: go had to change the README's go.mod" >&2; exit 1; }
    rm -f "$OUT_DIR/go-consumer.png"
    env -u LD_LIBRARY_PATH ./hello "$ROOT/models/digits" "$OUT_DIR/go-consumer.png"
    check_png "$OUT_DIR/go-consumer.png"
    # Installed prefix through pkg-config and the build tag, no cgo flags from the environment.
    rm -f hello "$OUT_DIR/go-consumer-pkgconfig.png"
    env -u CGO_CFLAGS -u CGO_LDFLAGS PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" GOFLAGS=-mod=mod GOPROXY=off \
        go build -tags diffgentor_pkgconfig -o hello .
    cmp go.mod go.mod.readme || { echo "go-test: go had to change the README's go.mod" >&2; exit 1; }
    LD_LIBRARY_PATH="$PREFIX/lib" ./hello "$ROOT/models/digits" "$OUT_DIR/go-consumer-pkgconfig.png"
    check_png "$OUT_DIR/go-consumer-pkgconfig.png"
)
echo "go-test: the README's own-module example builds offline (cgo flags, -tags diffgentor_pkgconfig) and draws 16x16"

# README.md's "Vendoring": the same module (require + replace), `go mod vendor`, then built from
# vendor/ with -mod=vendor both ways (cgo flags from the environment, and the pkg-config tag, which
# needs link_pkgconfig.go in vendor/ although the default build excludes it).
MODPATH=github.com/diffgentor/diffgentor/bindings/go
(
    cd "$CONSUMER"
    rm -rf vendor hello
    GOPROXY=off go mod vendor
    for f in link.go link_pkgconfig.go runtime.go; do
        test -f "vendor/$MODPATH/$f" || { echo "go-test: go mod vendor left out $f" >&2; exit 1; }
    done
    grep -qxF "# $MODPATH v0.0.0 => $ROOT/bindings/go" vendor/modules.txt || {
        echo "go-test: vendor/modules.txt does not record the replace" >&2; exit 1; }
    rm -f "$OUT_DIR/go-vendor.png" "$OUT_DIR/go-vendor-pkgconfig.png"
    CGO_CFLAGS="-I$ROOT/include" CGO_LDFLAGS="-L$LIB_DIR -Wl,-rpath,$LIB_DIR" GOPROXY=off \
        go build -mod=vendor -o hello .
    env -u LD_LIBRARY_PATH ./hello "$ROOT/models/digits" "$OUT_DIR/go-vendor.png"
    check_png "$OUT_DIR/go-vendor.png"
    rm -f hello
    env -u CGO_CFLAGS -u CGO_LDFLAGS PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" GOPROXY=off \
        go build -mod=vendor -tags diffgentor_pkgconfig -o hello .
    LD_LIBRARY_PATH="$PREFIX/lib" ./hello "$ROOT/models/digits" "$OUT_DIR/go-vendor-pkgconfig.png"
    check_png "$OUT_DIR/go-vendor-pkgconfig.png"
    cmp go.mod go.mod.readme || { echo "go-test: vendoring changed the README's go.mod" >&2; exit 1; }
    rm -rf vendor hello
)
echo "go-test: the README's module vendored (go mod vendor, -mod=vendor) builds both ways and draws the same digit"

# README.md's "By git tag": `go get MODULE@vX.Y.Z` resolves the tag bindings/go/vX.Y.Z (the
# module is in a subdirectory). Offline: a git repo holding a commit of this working tree's
# bindings/go, tagged bindings/go/v$version, stands in for github.com/diffgentor/diffgentor through
# git's url.<repo>.insteadOf (go runs git for github.com paths: no proxy, no ?go-get=1 lookup).
# go get, go mod tidy, go mod vendor, then the module cache and the repo are deleted and the
# program is built from vendor/ with GOPROXY=off and run. A plain vX.Y.Z tag must not satisfy it.
TAG=$OUT_DIR/go-tag
[ -d "$TAG" ] && chmod -R u+w "$TAG"
rm -rf "$TAG"
mkdir -p "$TAG/repo/bindings" "$TAG/home" "$TAG/hello"
cp -R "$ROOT/bindings/go" "$TAG/repo/bindings/go"
(
    cd "$TAG/repo"
    git init -q
    git add -A
    git -c user.name=test -c user.email=test@invalid commit -q -m "bindings/go snapshot"
    git tag "bindings/go/v$version"
    git tag v9.9.9 # the root module's tag format: not the subdirectory module's
    git clone -q --bare . "$TAG/repo.git"
)
cp "$CONSUMER/main.go" "$TAG/hello/main.go"
printf 'module example.com/hello-tag\n\ngo 1.19\n' > "$TAG/hello/go.mod"
(
    export GOCACHE GOPATH
    GOCACHE=$(go env GOCACHE) GOPATH=$(go env GOPATH)
    export HOME=$TAG/home GIT_CONFIG_NOSYSTEM=1 GOMODCACHE=$TAG/modcache GOFLAGS=-modcacherw
    git config --global "url.file://$TAG/repo.git.insteadOf" https://github.com/diffgentor/diffgentor
    export GOPROXY=direct GOPRIVATE=github.com/diffgentor/diffgentor
    export CGO_CFLAGS="-I$ROOT/include" CGO_LDFLAGS="-L$LIB_DIR -Wl,-rpath,$LIB_DIR"
    cd "$TAG/hello"
    if go get "$MODPATH@v9.9.9" >"$TAG/root-tag.log" 2>&1; then
        echo "go-test: go get resolved the root-style tag v9.9.9 for $MODPATH" >&2; exit 1
    fi
    # (go finds v9.9.9 as the root module's version, which holds no such package)
    grep -qE "does not contain package $MODPATH|unknown revision" "$TAG/root-tag.log" || {
        cat "$TAG/root-tag.log"; echo "go-test: go get @v9.9.9 failed for another reason" >&2; exit 1; }
    go get "$MODPATH@v$version"
    go mod tidy
    grep -qE "^require $MODPATH v$version\$" go.mod || {
        cat go.mod; echo "go-test: go.mod does not require $MODPATH v$version" >&2; exit 1; }
    grep -q "^$MODPATH v$version h1:" go.sum || { echo "go-test: no go.sum entry for the tag" >&2; exit 1; }
    go mod vendor
    go clean -modcache
    rm -rf "$TAG/repo" "$TAG/repo.git"
    GOPROXY=off go build -mod=vendor -o hello .
    env -u LD_LIBRARY_PATH ./hello "$ROOT/models/digits" "$OUT_DIR/go-tag.png"
    check_png "$OUT_DIR/go-tag.png"
)
echo "go-test: go get $MODPATH@v$version resolved git tag bindings/go/v$version (not v9.9.9), vendored and built offline"
echo "go-test: all Go binding tests passed ($OUT_DIR/go.rgb, $OUT_DIR/go-edit.rgb, $OUT_DIR/go-inpaint.rgb, $OUT_DIR/go-digit3.png)"
