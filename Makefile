# tilefuse: `make demo` (environment + the main job on the embedded example), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v4
# Dependencies come from pyproject.toml's extras (cpu, gpu, tune, postgres via all; dev), so the two
# cannot drift. PINS are only what a user install leaves open: torch is the local CPU wheel (an unpinned
# torch pulls GBs of CUDA packages), numpy < 2.4 (triton 3.6's interpreter converts 1-element arrays
# with int()), apache-tvm-ffi 0.1.14 (0.1.15 segfaults with TVM 0.27), pgserver runs the PostgreSQL tests.
EXTRAS := all,dev
PINS := torch==2.13.0 "numpy>=1.26,<2.4" apache-tvm-ffi==0.1.14.post1 pgserver==0.1.4

.PHONY: install demo test lint bench-cpu clean

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

bench-cpu: install
	$(PY) bench/cpu_matmul.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
