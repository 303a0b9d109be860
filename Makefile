# Two commands on a fresh machine:
#   make demo   set up .venv and run the whole pipeline on generated phantoms
#   make test   set up .venv and run ruff + the test suite
# torch is pinned: `torch==2.13.0` is the CPU build on local disk here; an unpinned torch would make
# pip download a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

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

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m tunepp_deploy.bench.kernels --out bench/results

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
