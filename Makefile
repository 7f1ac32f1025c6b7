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

tutorials: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[tutorials]"
	$(VENV)/bin/jupytext --to ipynb tutorials/*.py
	$(VENV)/bin/jupyter notebook tutorials/

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

# Numba caches compiled CPU kernels in __pycache__ (an edit of any kernel source recompiles them
# on the next run); this deletes the cache.
clean-cache:
	find dcn_numba -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) runs .pytest_cache .hypothesis
