# tilefuse: `make demo` (environment + the main job on the embedded example), `make test`,
# `make gpu-check` (the one command to run when a GPU is lent; README "GPU check").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v5
# Dependencies come from pyproject.toml's extras (cpu, gpu, tune, postgres via all; splat; dev), so the two
# cannot drift. PINS are only what a user install leaves open: torch is the local CPU wheel (an unpinned
# torch pulls GBs of CUDA packages), numpy < 2.4 (triton 3.6's interpreter converts 1-element arrays
# with int()), apache-tvm-ffi 0.1.14 (0.1.15 segfaults with TVM 0.27), pgserver runs the PostgreSQL tests.
EXTRAS := all,splat,dev
PINS := torch==2.13.0 "numpy>=1.26,<2.4" apache-tvm-ffi==0.1.14.post1 pgserver==0.1.4

.PHONY: install demo test lint bench-cpu gpu-check clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PINS) -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m tilefuse.demo

lint: install
	$(VENV)/bin/ruff check .
	# mypy needs a directory named after the package; the repository root is the package.
	d=$$(mktemp -d) && ln -s "$(CURDIR)" "$$d/tilefuse" && MYPYPATH="$$d" $(VENV)/bin/mypy -p tilefuse \
	  --config-file pyproject.toml; rc=$$?; rm -rf "$$d"; exit $$rc

test: lint
	$(VENV)/bin/pytest

# gpu-check needs no .venv and installs nothing: a GPU machine's torch must not be reinstalled (the pinned
# CPU wheel above would replace its CUDA build). It runs the .venv's python when there is one, else the
# system python3 (override: make gpu-check GPU_CHECK_PYTHON=...), with this checkout on the import path
# as package `tilefuse` through a temp dir's symlink (the trick the lint target uses). Options go in
# GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--cases 'family:*' --only kernels". Exit status 1: a check failed.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	d=$$(mktemp -d) && ln -s "$(CURDIR)" "$$d/tilefuse" && PYTHONPATH="$$d$${PYTHONPATH:+:$$PYTHONPATH}" \
	  $(GPU_CHECK_PYTHON) -m tilefuse.gpu_check $(GPU_CHECK_ARGS); rc=$$?; rm -rf "$$d"; exit $$rc

bench-cpu: install
	$(PY) bench/cpu_matmul.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
