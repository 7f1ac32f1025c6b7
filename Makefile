# Every target sets itself up: a fresh clone needs only `make test` and `make train`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test train tutorials bench gpu-check clean clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

train: $(VENV)/.installed
	$(PY) -m dcn_numba.train --out runs/latest

tutorials: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[tutorials]"
	$(VENV)/bin/jupytext --to ipynb tutorials/*.py
	$(VENV)/bin/jupyter notebook tutorials/

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

# The prepared GPU check (benchmarks/gpu_check.py) for a lent GPU machine: it runs on that machine's
# own Python and packages, not the venv, and installs nothing. Without a GPU it rehearses under the
# CUDA simulator. `make gpu-check OUT=folder` writes folder/gpu_check.md and the logs.
GPU_PYTHON ?= python3

gpu-check:
	$(if $(OUT),,$(error give the report's folder: make gpu-check OUT=folder))
	PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py --out $(OUT)

# Numba caches compiled CPU kernels in __pycache__, keyed on each kernel's own file: after editing
# kernels/sampling.py (inlined into every kernel), `make clean-cache` forces a recompilation.
clean-cache:
	find dcn_numba -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) runs .pytest_cache .hypothesis
