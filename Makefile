# Every target sets itself up: a fresh clone needs only `make test` and `make train`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test train tutorials bench clean clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

train: $(VENV)/.installed
	$(PY) -m dcn_numba.train --out runs/latest

# One Numba and one BLAS thread: on the shared 2-core machine a 100-step run of 2fc_droi took
# 36 s this way and 182 s with two threads each, whose spinning waits fought the other jobs.
.PHONY: detect
detect: $(VENV)/.installed
	NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m dcn_numba.detect --out runs/detect

tutorials: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[tutorials]"
	$(VENV)/bin/jupytext --to ipynb tutorials/*.py
	$(VENV)/bin/jupyter notebook tutorials/

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

# Numba caches compiled CPU kernels in __pycache__, keyed on each kernel's own file: after editing
# kernels/sampling.py (inlined into every kernel), `make clean-cache` forces a recompilation.
clean-cache:
	find dcn_numba -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) runs .pytest_cache .hypothesis
