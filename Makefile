# Two commands on a fresh machine:
#   make demo   set up .venv and run the whole pipeline on generated phantoms
#   make test   set up .venv and run ruff + the test suite
# torch is pinned: `torch==2.13.0` is the CPU build on local disk here; an unpinned torch would make
# pip download a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean gpu-check gpu-check-dry device-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunepp demo --out demo_out

lint: $(STAMP)
	$(BIN)/ruff check .

# The Triton round-trip test needs nvidia-pytriton's bundled tritonserver; --no-deps because the
# wheel pins numpy<2 (we only run its server binary; docs/triton.md). Test-only, not in the demo.
$(VENV)/.triton: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps nvidia-pytriton==0.7.0
	touch $(VENV)/.triton

test: $(STAMP) $(VENV)/.triton
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m tunepp_deploy.bench.kernels --out bench/results

# GPU suite (issue 15). gpu-check runs ON a lent GPU machine (the image's python3, no venv, no network):
#   device call: make gpu-check OUT=$$OUT   (carry .whl; about 8 minutes)
# gpu-check-dry is its CPU rehearsal at tiny sizes (CI runs it as tests/bench/test_gpu_suite.py);
# device-wheels downloads here the wheels the device lacks (skips with a reason without network).
OUT ?= /tmp/tunepp_gpu_out
GPU_DRY_OUT ?= /tmp/tunepp_gpu_dry
gpu-check:
	OUT=$(OUT) bash bench/device/gpu_check.sh

gpu-check-dry: $(STAMP)
	$(BIN)/python bench/device/install.py --wheels .whl --target /tmp/tunepp_dry_site --mode copy \
		--record $(GPU_DRY_OUT)/install.json
	$(BIN)/python -m tunepp_deploy.bench.gpu_wheels check --dest .whl > $(GPU_DRY_OUT)/wheels.json
	PYTHONPATH=/tmp/tunepp_dry_site $(BIN)/python -m tunepp_deploy bench gpu --dry --out $(GPU_DRY_OUT) \
		--install-record $(GPU_DRY_OUT)/install.json

device-wheels: $(STAMP)
	$(BIN)/python -m tunepp_deploy.bench.gpu_wheels download --dest .whl

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
