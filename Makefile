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

.PHONY: all ort build demo test lint clean

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
		$(DG) generate --model models/digits --prompt "a handwritten digit $$d" \
			--seed $(DEMO_SEED) --output $(DEMO_DIR)/digit_$$d.png >/dev/null || exit 1; \
	done
	$(DG) montage --columns 10 --scale 16 --output $(DEMO_DIR)/digits.png \
		$(foreach d,0 1 2 3 4 5 6 7 8 9,$(DEMO_DIR)/digit_$(d).png)
	@echo "demo: open $(DEMO_DIR)/digits.png"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: ort lint
	$(CARGO) test --locked

clean:
	rm -rf target out $(ORT_DIR)
