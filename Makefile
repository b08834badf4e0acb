# The two commands a newcomer runs: `make demo` (an image from the bundled digits model) and
# `make test` (the whole suite). Both fetch ONNX Runtime themselves.
ORT_VERSION := 1.31.1
ORT_DIR := $(CURDIR)/.ort
ORT_LIB := $(ORT_DIR)/lib/libonnxruntime.so.$(ORT_VERSION)
export DG_ORT_DYLIB_PATH := $(ORT_LIB)

CARGO ?= cargo
DG := target/release/dg
DEMO_DIR := out/demo
DEMO_SEED ?= 7

.PHONY: all ort build demo test lint clean header-check c-build c-test c-valgrind-one c-test-install \
	c-lib install bindings-test bench-serve wheel

# The C API (docs/c-api.md): version numbers from Cargo.toml, the pinned cbindgen, install paths.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
VERSION_MAJOR := $(word 1,$(subst ., ,$(VERSION)))
VERSION_MINOR := $(word 2,$(subst ., ,$(VERSION)))
VERSION_PATCH := $(word 3,$(subst ., ,$(VERSION)))
CBINDGEN_VERSION := 0.29.4
# Debian packages a target needs, installed when missing (a fresh machine may have no package lists yet).
APT_INSTALL = sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$@" || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$@"; }' apt-install
PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR = $(PREFIX)/lib
INCLUDEDIR = $(PREFIX)/include
CXX ?= g++
C_WARNINGS := -Wall -Wextra -Werror
C_TEST_DIR := target/c-test
C_TEST_MODEL := models/tiny-sd
C_TESTS := $(sort $(basename $(notdir $(wildcard tests/c/*.c))))
# Arguments of each tests/c/NAME.c, given the output directory as $(1) (a test without an entry
# here runs with none). doc_example is the program in docs/c-api.md.
C_TEST_ARGS_errors = $(C_TEST_MODEL) $(1)
C_TEST_ARGS_generate = $(C_TEST_MODEL) $(1)/generate.rgb $(1)/generate.png
C_TEST_ARGS_threads = $(C_TEST_MODEL)
C_TEST_ARGS_edit = $(C_TEST_MODEL) $(C_TEST_DIR)/out/edit-init.rgb $(1)/edit.rgb \
	$(C_TEST_INPAINT_MODEL) $(C_TEST_DIR)/out/edit-mask.rgb $(1)/inpaint.rgb
C_TEST_EDIT_IMAGE := tests/golden/edit/image_64x64.png
# tests/c/edit.c's img2img request; the inpainting one is the same plus --mask on an inpainting package.
C_TEST_EDIT_REQUEST := --image $(C_TEST_EDIT_IMAGE) --prompt "a red fox" --seed 5 --steps 6 \
	--scheduler euler_a --strength 0.5
C_TEST_INPAINT_MODEL := models/tiny-sd-inpaint
C_TEST_EDIT_MASK := tests/golden/edit/mask_64x64.png
C_TEST_ARGS_doc_example = models/digits $(1)/doc_example.png
C_TEST_ARGS_remote = models/digits
# tests/c/lora.c: generate.c's request with the LoRA stack a:0.8 (out/native/lora/lora.rgb, which the
# bindings compare with) and without a stack after loading it (base.rgb, compared with dg generate's).
C_TEST_LORA_FILE := models/lora/sd_a.safetensors
C_TEST_ARGS_lora = $(C_TEST_MODEL) $(C_TEST_LORA_FILE) $(1)/lora.rgb $(1)/base.rgb
# Valgrind runs the same arguments except where an entry here makes the workload smaller.
C_TEST_VALGRIND_ARGS_threads = $(C_TEST_MODEL) 16
C_TEST_VALGRIND_ARGS_remote = -
VALGRIND := valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
	--errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
	--num-callers=40 --suppressions=tests/c/onnxruntime.supp

all: build

ort: $(ORT_LIB)

$(ORT_LIB):
	scripts/fetch-ort.sh $(ORT_VERSION) $(ORT_DIR)

build: ort
	$(CARGO) build --release --locked

# Ten digits from models/digits with the package's defaults, tiled into one sheet.
demo: build
	@mkdir -p $(DEMO_DIR)
	@for d in 0 1 2 3 4 5 6 7 8 9; do \
		$(DG) generate -q --model models/digits --prompt "a handwritten digit $$d" \
			--seed $(DEMO_SEED) --output $(DEMO_DIR)/digit_$$d.png >/dev/null || exit 1; \
	done
	$(DG) montage --columns 10 --scale 16 --output $(DEMO_DIR)/digits.png \
		$(foreach d,0 1 2 3 4 5 6 7 8 9,$(DEMO_DIR)/digit_$(d).png)
	@echo "demo: open $(DEMO_DIR)/digits.png"

# Throughput through dg serve against dg-bench in process, same pipeline and settings (a few
# minutes; figures in docs/performance.md). MODEL=models/tiny-sd by default.
bench-serve: build
	scripts/bench-serve.sh $(or $(MODEL),models/tiny-sd)

# Generation speed of a VLM: dg-bench vlm against onnxruntime-genai's Python generator on the same graphs,
# alternating in one run (a few minutes; figures in docs/performance.md, "VLM"). Needs a Python with
# onnxruntime-genai (VENV=/work/venv-vlm by default; also torch, transformers and mobius-onnx the first time,
# to build the random-weight benchmark model into target/vlm-bench). MODEL=DIR measures that package instead.
.PHONY: bench-vlm
bench-vlm: build
	scripts/bench-vlm.sh $(MODEL)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Tests that run Python peers (the OpenAI contract stub, the openai client, schemathesis, pandas,
# Ray) build one venv under target/ (tests/peers/requirements.txt); here a failure to build it
# fails those tests instead of skipping them.
test: ort lint
	@# The Ray example's test loads libdiffgentor.so through the Python binding: build it first
	@# (cargo test builds the library only as an rlib).
	$(CARGO) build --locked --lib
	DG_CONTRACT_REQUIRED=1 $(CARGO) test --locked
	@$(MAKE) --no-print-directory header-check
	@$(MAKE) --no-print-directory c-test
	@$(MAKE) --no-print-directory bindings-test

# Go, C++ and Python bindings (docs/bindings.md): each bindings/LANG/test.sh installs what it needs,
# runs the binding's tests (a coverage test among them: every function of the header is called) and
# example, and writes the fox request's raw RGB and tests/c/edit.c's img2img and inpainting requests',
# which must equal the CLI's bytes (target/c-test/out/rust.rgb, rust-edit.rgb and rust-inpaint.rgb,
# made by c-test).
BINDINGS := go cpp python
BINDINGS_OUT := $(C_TEST_DIR)/bindings
bindings-test: ort c-lib
	@test -f $(C_TEST_DIR)/out/rust-inpaint.rgb || $(MAKE) --no-print-directory c-test
	@for lang in $(BINDINGS); do \
		echo "bindings-test: $$lang"; \
		DG_LIB_DIR=$(CURDIR)/target/release bindings/$$lang/test.sh $(BINDINGS_OUT)/$$lang || exit 1; \
		cmp $(BINDINGS_OUT)/$$lang/$$lang.rgb $(C_TEST_DIR)/out/rust.rgb || { \
			echo "bindings-test: $$lang gave other pixels than the C API and the CLI"; exit 1; }; \
		cmp $(BINDINGS_OUT)/$$lang/$$lang-edit.rgb $(C_TEST_DIR)/out/rust-edit.rgb || { \
			echo "bindings-test: $$lang's img2img gave other pixels than dg edit"; exit 1; }; \
		cmp $(BINDINGS_OUT)/$$lang/$$lang-inpaint.rgb $(C_TEST_DIR)/out/rust-inpaint.rgb || { \
			echo "bindings-test: $$lang's inpainting gave other pixels than dg edit --mask"; exit 1; }; \
	done
	@echo "bindings-test: go, cpp and python give the CLI's bytes for the same seed (text-to-image, img2img and inpainting)"

# include/diffgentor.h is generated by cbindgen $(CBINDGEN_VERSION) and committed: fail when it is
# stale, and compile it as C99 and as C++17 with every warning an error.
header-check:
	@mkdir -p $(C_TEST_DIR)
	@if ! cbindgen --version 2>/dev/null | grep -qx 'cbindgen $(CBINDGEN_VERSION)'; then \
		echo "header-check: installing cbindgen $(CBINDGEN_VERSION)"; \
		$(CARGO) install cbindgen --version $(CBINDGEN_VERSION) --locked || exit 1; \
	fi
	@cbindgen=$$(command -v cbindgen); \
	if ! $$cbindgen --version | grep -qx 'cbindgen $(CBINDGEN_VERSION)'; then \
		cbindgen=$${CARGO_HOME:-$$HOME/.cargo}/bin/cbindgen; fi; \
	$$cbindgen --quiet --config cbindgen.toml --output $(C_TEST_DIR)/diffgentor.h.new || exit 1; \
	if ! diff -u include/diffgentor.h $(C_TEST_DIR)/diffgentor.h.new; then \
		echo "header-check: include/diffgentor.h is stale: it differs from what cbindgen $(CBINDGEN_VERSION)"; \
		echo "  makes from src/capi/ (diff above). Regenerate and commit it:"; \
		echo "  cbindgen --config cbindgen.toml --output include/diffgentor.h"; \
		exit 1; \
	fi
	@printf '#include "diffgentor.h"\n' > $(C_TEST_DIR)/header_check.c
	$(CC) -std=c99 $(C_WARNINGS) -pedantic -fsyntax-only -Iinclude $(C_TEST_DIR)/header_check.c
	$(CXX) -std=c++17 $(C_WARNINGS) -pedantic -fsyntax-only -Iinclude -x c++ $(C_TEST_DIR)/header_check.c
	@echo "header-check: include/diffgentor.h is current and compiles as C99 and C++17"

# Builds the debug cdylib, checks its SONAME and compiles every tests/c/*.c, the docs example and
# the test tools against include/. target/c-test/lib holds libdiffgentor.so and the SONAME link
# libdiffgentor.so.$(VERSION_MAJOR) (what the test programs record as NEEDED), found through rpath.
c-build:
	$(CARGO) build --locked --lib --bin dg
	@soname=$$(readelf -d target/debug/libdiffgentor.so | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'); \
	if [ "$$soname" != "libdiffgentor.so.$(VERSION_MAJOR)" ]; then \
		echo "c-build: target/debug/libdiffgentor.so has SONAME '$$soname', expected libdiffgentor.so.$(VERSION_MAJOR)"; \
		exit 1; \
	fi
	@# The server's and the batch runner's crates belong to dg alone, never to the library (the
	@# symbol table lists every crate linked in; ureq, which the library does use, proves it is there).
	@syms=$$(nm target/debug/libdiffgentor.so); \
	if ! echo "$$syms" | grep -q ureq; then echo "c-build: no symbol table to check"; exit 1; fi; \
	if echo "$$syms" | grep -q -i -e tokio -e axum -e hyper -e parquet -e indicatif -e tracing_; then \
		echo "c-build: libdiffgentor.so links a crate only dg should (tokio, axum, hyper, parquet, indicatif, tracing)"; \
		exit 1; \
	fi
	@mkdir -p $(C_TEST_DIR)/lib $(C_TEST_DIR)/bin $(C_TEST_DIR)/out
	@ln -sf $(CURDIR)/target/debug/libdiffgentor.so $(C_TEST_DIR)/lib/libdiffgentor.so
	@ln -sf $(CURDIR)/target/debug/libdiffgentor.so $(C_TEST_DIR)/lib/libdiffgentor.so.$(VERSION_MAJOR)
	@# The docs example is compiled from docs/c-api.md itself, so it can never drift.
	@awk '/<!-- c-api-example -->/ { armed = 1; next } \
		armed && /^```c$$/ { copying = 1; next } \
		copying && /^```$$/ { exit } \
		copying { print }' docs/c-api.md > $(C_TEST_DIR)/doc_example.c
	@test -s $(C_TEST_DIR)/doc_example.c || { echo "c-build: no example found in docs/c-api.md"; exit 1; }
	@if [ ! -e /usr/include/zlib.h ]; then $(APT_INSTALL) zlib1g-dev; fi
	$(CC) -std=c99 $(C_WARNINGS) -O2 tests/c/tools/png2rgb.c -lz -o $(C_TEST_DIR)/bin/png2rgb
	@set -e; for t in $(C_TESTS); do \
		echo "$(CC) ... tests/c/$$t.c -o $(C_TEST_DIR)/bin/$$t"; \
		$(CC) -std=c99 $(C_WARNINGS) -g -O1 -Iinclude -DEXPECTED_MAJOR=$(VERSION_MAJOR) \
			-DEXPECTED_MINOR=$(VERSION_MINOR) -DEXPECTED_PATCH=$(VERSION_PATCH) tests/c/$$t.c \
			-L$(C_TEST_DIR)/lib -Wl,-rpath,$(CURDIR)/$(C_TEST_DIR)/lib -ldiffgentor -lpthread \
			-o $(C_TEST_DIR)/bin/$$t; \
	done
	$(CC) -std=c99 $(C_WARNINGS) -g -O1 -Iinclude $(C_TEST_DIR)/doc_example.c \
		-L$(C_TEST_DIR)/lib -Wl,-rpath,$(CURDIR)/$(C_TEST_DIR)/lib -ldiffgentor -o $(C_TEST_DIR)/bin/doc_example

# Runs the C programs natively, checks that C and Rust give the same pixels, runs every program
# again under valgrind memcheck, then installs into a temporary prefix and builds the docs example
# there with pkg-config.
c-test: ort c-build
	@rm -rf $(C_TEST_DIR)/out $(C_TEST_DIR)/valgrind
	@mkdir -p $(C_TEST_DIR)/out/native $(C_TEST_DIR)/valgrind
	$(C_TEST_DIR)/bin/png2rgb $(C_TEST_EDIT_IMAGE) $(C_TEST_DIR)/out/edit-init.rgb
	$(C_TEST_DIR)/bin/png2rgb $(C_TEST_EDIT_MASK) $(C_TEST_DIR)/out/edit-mask.rgb
	$(foreach t,$(C_TESTS) doc_example,$(call run_c_test,$(t)))
	@# The same request through the Rust API (dg generate) must give the same pixels, byte for byte.
	target/debug/dg generate --model $(C_TEST_MODEL) --prompt "a red fox" --seed 42 --steps 3 \
		--scheduler euler --output $(C_TEST_DIR)/out/rust.png
	$(C_TEST_DIR)/bin/png2rgb $(C_TEST_DIR)/out/rust.png $(C_TEST_DIR)/out/rust.rgb
	$(C_TEST_DIR)/bin/png2rgb $(C_TEST_DIR)/out/native/generate/generate.png $(C_TEST_DIR)/out/generate-png.rgb
	@cmp $(C_TEST_DIR)/out/native/generate/generate.rgb $(C_TEST_DIR)/out/rust.rgb || { \
		echo "c-test: the C API's pixels differ from dg generate's for the same request"; exit 1; }
	@cmp $(C_TEST_DIR)/out/native/generate/generate.rgb $(C_TEST_DIR)/out/generate-png.rgb || { \
		echo "c-test: dg_image_write_png's file does not decode to the image's pixels"; exit 1; }
	@echo "c-test: C API pixels == Rust API pixels (dg generate), byte for byte"
	@cmp $(C_TEST_DIR)/out/native/lora/base.rgb $(C_TEST_DIR)/out/rust.rgb || { \
		echo "c-test: a loaded but unused LoRA changed the C API's pixels (tests/c/lora.c)"; exit 1; }
	$(call c_test_edit_parity,edit,$(C_TEST_MODEL),,img2img,dg edit)
	$(call c_test_edit_parity,inpaint,$(C_TEST_INPAINT_MODEL),--mask $(C_TEST_EDIT_MASK),inpainting,dg edit --mask)
	@# Valgrind: two programs at a time (2 cores); each log is kept in $(C_TEST_DIR)/valgrind.
	@printf '%s\n' $(C_TESTS_SLOWEST_FIRST) | xargs -P 2 -I{} $(MAKE) --no-print-directory -s \
		c-valgrind-one C_TEST_NAME={}
	@$(MAKE) --no-print-directory c-test-install
	@echo "c-test: all C API tests passed"

# $(call c_test_edit_parity,NAME,MODEL,EXTRA,WHAT,CLI): `dg edit` on MODEL with tests/c/edit.c's
# request plus EXTRA writes out/rust-NAME.rgb (what the bindings compare with too), which must equal
# the C API's out/native/edit/NAME.rgb byte for byte.
define c_test_edit_parity
target/debug/dg edit --model $(2) $(C_TEST_EDIT_REQUEST) $(3) --output $(C_TEST_DIR)/out/rust-$(1).png
$(C_TEST_DIR)/bin/png2rgb $(C_TEST_DIR)/out/rust-$(1).png $(C_TEST_DIR)/out/rust-$(1).rgb
@cmp $(C_TEST_DIR)/out/native/edit/$(1).rgb $(C_TEST_DIR)/out/rust-$(1).rgb || { \
	echo "c-test: the C API's $(4) pixels differ from $(5)'s for the same request"; exit 1; }
@echo "c-test: C API $(4) pixels == $(5) pixels, byte for byte"

endef

# $(call run_c_test,NAME): one native run, outputs in out/native/NAME.
define run_c_test
@echo "== $(1)"
@mkdir -p $(C_TEST_DIR)/out/native/$(1)
$(C_TEST_DIR)/bin/$(1) $(call C_TEST_ARGS_$(1),$(C_TEST_DIR)/out/native/$(1))

endef

# One program under valgrind (make c-valgrind-one C_TEST_NAME=errors); on failure its log is shown.
# Valgrind runs one thread at a time, so ONNX Runtime gets one intra-op thread there
# (DG_TEST_INTRA_THREADS, read by tests/c/common.h) instead of pool workers spinning for nothing.
C_TESTS_SLOWEST_FIRST = $(filter $(C_TESTS) doc_example,generate threads doc_example errors) \
	$(filter-out generate threads errors,$(C_TESTS))
c-valgrind-one:
	@dir=$(C_TEST_DIR)/out/valgrind/$(C_TEST_NAME); mkdir -p $$dir; \
	log=$(C_TEST_DIR)/valgrind/$(C_TEST_NAME).log; start=$$(date +%s); \
	if DG_TEST_INTRA_THREADS=1 $(VALGRIND) --log-file=$$log $(C_TEST_DIR)/bin/$(C_TEST_NAME) \
		$(or $(call C_TEST_VALGRIND_ARGS_$(C_TEST_NAME),$$dir),$(call C_TEST_ARGS_$(C_TEST_NAME),$$dir)) \
		> $$dir.stdout 2>&1; then \
		echo "valgrind $(C_TEST_NAME): clean ($$(( $$(date +%s) - start ))s;" \
			"$$(grep -o 'ERROR SUMMARY: .*' $$log | tail -n 1);" \
			"$$(grep -o -e 'definitely lost: [0-9,]* bytes' -e 'indirectly lost: [0-9,]* bytes' \
				-e 'All heap blocks were freed' $$log | paste -sd, -))"; \
	else \
		rc=$$?; echo "valgrind $(C_TEST_NAME): FAILED (exit $$rc; 99 = memcheck errors or leaks)"; \
		cat $$dir.stdout $$log; exit 1; \
	fi

# make install into a temporary prefix, then build and run the docs example with pkg-config, against
# the shared library and against libdiffgentor.a (Libs.private).
C_TEST_PREFIX := $(CURDIR)/$(C_TEST_DIR)/prefix
c-test-install:
	@if ! command -v pkg-config >/dev/null; then $(APT_INSTALL) pkg-config; fi
	@rm -rf $(C_TEST_PREFIX)
	@$(MAKE) --no-print-directory install PREFIX=$(C_TEST_PREFIX)
	@export PKG_CONFIG_PATH=$(C_TEST_PREFIX)/lib/pkgconfig; set -e; \
	test "$$(pkg-config --modversion diffgentor)" = "$(VERSION)" || { \
		echo "c-test-install: pkg-config reports $$(pkg-config --modversion diffgentor), expected $(VERSION)"; exit 1; }; \
	echo "$(CC) $(C_TEST_DIR)/doc_example.c $$(pkg-config --cflags --libs diffgentor)"; \
	$(CC) -std=c99 $(C_WARNINGS) $(C_TEST_DIR)/doc_example.c $$(pkg-config --cflags --libs diffgentor) \
		-o $(C_TEST_DIR)/bin/doc_example_installed; \
	needed=$$(readelf -d $(C_TEST_DIR)/bin/doc_example_installed | sed -n 's/.*(NEEDED).*\[\(libdiffgentor.*\)\]/\1/p'); \
	test "$$needed" = "libdiffgentor.so.$(VERSION_MAJOR)" || { \
		echo "c-test-install: the example needs '$$needed', expected libdiffgentor.so.$(VERSION_MAJOR)"; exit 1; }; \
	LD_LIBRARY_PATH=$(C_TEST_PREFIX)/lib $(C_TEST_DIR)/bin/doc_example_installed models/digits \
		$(C_TEST_DIR)/out/doc_example_installed.png; \
	private=$$(pkg-config --static --libs diffgentor | tr ' ' '\n' | grep -v -e '^-L' -e '^-ldiffgentor$$' | tr '\n' ' '); \
	echo "$(CC) $(C_TEST_DIR)/doc_example.c $(C_TEST_PREFIX)/lib/libdiffgentor.a $$private"; \
	$(CC) -std=c99 $(C_WARNINGS) $(C_TEST_DIR)/doc_example.c $$(pkg-config --cflags diffgentor) \
		$(C_TEST_PREFIX)/lib/libdiffgentor.a $$private -o $(C_TEST_DIR)/bin/doc_example_static; \
	if readelf -d $(C_TEST_DIR)/bin/doc_example_static | grep -q 'NEEDED.*libdiffgentor'; then \
		echo "c-test-install: the static build still needs libdiffgentor.so"; exit 1; fi; \
	$(C_TEST_DIR)/bin/doc_example_static models/digits $(C_TEST_DIR)/out/doc_example_static.png; \
	cmp $(C_TEST_DIR)/out/doc_example_installed.png $(C_TEST_DIR)/out/doc_example_static.png; \
	echo "c-test-install: installed shared and static library, header and diffgentor.pc work"

# Installs the release library (libdiffgentor.so.$(VERSION) with its SONAME and dev links, and
# libdiffgentor.a), the header, diffgentor.pc and the dg and dg-bench programs under $(DESTDIR)$(PREFIX).
install:
	$(CARGO) build --release --locked --lib --bin dg --bin dg-bench
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 target/release/dg target/release/dg-bench $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)
	install -m 0755 target/release/libdiffgentor.so $(DESTDIR)$(LIBDIR)/libdiffgentor.so.$(VERSION)
	ln -sf libdiffgentor.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libdiffgentor.so.$(VERSION_MAJOR)
	ln -sf libdiffgentor.so.$(VERSION_MAJOR) $(DESTDIR)$(LIBDIR)/libdiffgentor.so
	install -m 0644 target/release/libdiffgentor.a $(DESTDIR)$(LIBDIR)/libdiffgentor.a
	install -m 0644 include/diffgentor.h $(DESTDIR)$(INCLUDEDIR)/diffgentor.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' diffgentor.pc.in \
		> $(DESTDIR)$(LIBDIR)/pkgconfig/diffgentor.pc
	install -d $(DESTDIR)$(LIBDIR)/cmake/diffgentor
	install -m 0644 bindings/cpp/include/diffgentor.hpp $(DESTDIR)$(INCLUDEDIR)/diffgentor.hpp
	install -m 0644 bindings/cpp/cmake/diffgentorConfig.cmake bindings/cpp/cmake/diffgentorConfigVersion.cmake \
		$(DESTDIR)$(LIBDIR)/cmake/diffgentor/

# The release library for in-tree use (docs/c-api.md): -Iinclude -Ltarget/release -ldiffgentor.
# Adds the SONAME link target/release/libdiffgentor.so.$(VERSION_MAJOR) that programs load.
c-lib:
	$(CARGO) build --release --locked --lib
	ln -sf libdiffgentor.so target/release/libdiffgentor.so.$(VERSION_MAJOR)

# The Python binding as a platform wheel (docs/bindings.md): dist/diffgentor-VERSION-py3-none-manylinux_2_N_ARCH.whl
# bundles the release library and requires onnxruntime==$(ORT_VERSION), so `pip install` of it needs
# no DG_* variable. The manylinux tag comes from the library's glibc symbols (bindings/python/build-wheel.sh).
wheel: c-lib
	bindings/python/build-wheel.sh target/release/libdiffgentor.so $(ORT_VERSION) dist

clean:
	rm -rf target out $(ORT_DIR)
