# tilefuse: `make demo` (environment + the main job on the embedded example), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-v3
# torch is pinned to the local CPU wheel (an unpinned torch pulls GBs of CUDA packages);
# numpy < 2.4 because triton 3.6's interpreter converts 1-element arrays with int().
DEPS := torch==2.13.0 "numpy>=1.26,<2.4" triton==3.6.0 apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 ml_dtypes \
        xgboost optuna "sqlalchemy>=2.0.28" matplotlib psutil nvidia-ml-py pytest hypothesis ruff mypy scipy \
        "psycopg[binary]" pgserver==0.1.4 cloudpickle

.PHONY: install demo test lint bench-cpu clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	$(PY) -m pip install -q --no-deps -e .
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
