# visctr: `make demo` (set-up + the small benchmark run), `make test` (set-up + test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
OUT ?= runs/demo

.PHONY: demo test test-precision setup data lint bench clean

demo: setup data
	$(BIN)/visctr run --preset small --seeds 1 --out $(OUT)

test: setup data
	$(BIN)/python -m pytest -q

# the precision-sensitive tests on both CPU paths (fp32, and bf16 encoder training under
# precision: auto), whatever this CPU has natively; CI runs it after `make test`
test-precision: setup data
	for v in 0 1; do \
	  echo "precision-sensitive tests, VISCTR_CPU_BF16=$$v"; \
	  VISCTR_CPU_BF16=$$v $(BIN)/python -m pytest -q -m precision || exit 1; \
	done

setup: $(VENV)/.installed

# torch/torchvision first, pinned to the releases pip may install here (local CUDA builds);
# the interop extra (ONNX Runtime, FuxiCTR) so that the tests checking visctr's artifacts
# with those tools run instead of being skipped, and timm (with safetensors) so that the
# pretrained-backbone tests do.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[dev,interop,timm]"
	touch $@

# Fashion-MNIST: use $VISCTR_DATA if set, else the Debian package (installed when root).
data:
	@if [ -n "$$VISCTR_DATA" ]; then \
	  echo "using Fashion-MNIST from VISCTR_DATA=$$VISCTR_DATA"; \
	elif [ -e "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -e "$(FMNIST_DIR)/train-images-idx3-ubyte" ]; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR). Install it with" \
	       "'sudo apt-get install dataset-fashion-mnist', or download the four idx files from" \
	       "https://github.com/zalandoresearch/fashion-mnist and set VISCTR_DATA=DIR" \
	       "(or pass --data-dir DIR to visctr)." >&2; \
	  exit 1; \
	fi

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
