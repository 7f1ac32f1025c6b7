# Every target sets itself up: a fresh clone needs only `make test` and `make train`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test train tutorials bench install-check torch-check gpu-check clean clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q

# --resume: run again, a finished run is read back and one cut short continues from its checkpoint.
train: $(VENV)/.installed
	$(PY) -m dcn_numba.train --out runs/latest --resume

# One Numba and one BLAS thread: on the shared 2-core machine a 100-step run of 2fc_droi took
# 36 s this way and 182 s with two threads each, whose spinning waits fought the other jobs.
.PHONY: detect
detect: $(VENV)/.installed
	NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m dcn_numba.detect --out runs/detect --resume

# The segmentation toy's default run (regular, dilated and three-layer deformable nets), with one
# Numba and one BLAS thread as above; dcn_numba/apps/segmentation/segment.py gives its time budget.
.PHONY: segment
segment: $(VENV)/.installed
	NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m dcn_numba.segment --out runs/segment --resume

tutorials: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[tutorials]"
	$(VENV)/bin/jupytext --to ipynb tutorials/*.py
	$(VENV)/bin/jupyter notebook tutorials/

# The course as a static site in build/site (open build/site/index.html): every notebook executed
# once, with its figures, beside the README, the specification and the results pages.
.PHONY: docs
docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) tutorials/course_site.py --out build/site

bench: $(VENV)/.installed
	$(PY) benchmarks/bench.py

# The install matrix of docs/torch.md, resolved by pip without installing anything (it fetches the
# packages' metadata): fails on any install that pip cannot resolve, such as two CUDA toolkits.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
install-check: $(VENV)/.installed
	$(PY) -m pip install --dry-run --ignore-installed --quiet -e ".[dev]" $(TORCH_PINS)
	$(PY) -m pip install --dry-run --ignore-installed --quiet -e ".[dev,cuda]"
	$(PY) -m pip install --dry-run --ignore-installed --quiet -e ".[cuda12]"
	$(PY) -m pip install --dry-run --ignore-installed --quiet -e ".[dev,bench]"
	@echo "install-check: every install of the matrix resolves"

# The tests and cross-checks that need torch, OpenVINO, ONNX Runtime and onnxscript (which
# torch.onnx.export needs), in a venv of their own: tests/dcn_numba_torch/ (the tests of dcn_numba.torch).
TORCH_VENV := .venv-torch
torch-check:
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet -e ".[dev,bench]"
	$(TORCH_VENV)/bin/python -m pytest -q -n 0 tests/dcn_numba_torch tests/crosscheck/test_crosscheck.py tests/crosscheck/test_crosscheck_dcnv3.py
	$(TORCH_VENV)/bin/python -m dcn_numba.crosscheck cpu torchvision openvino openvino-nopad onnxruntime
	$(TORCH_VENV)/bin/python -m dcn_numba.crosscheck --op dcnv3 cpu torch-grid-sample torch-grid-sample-upstream-pads

# The prepared GPU check (benchmarks/gpu_check.py) for a lent GPU machine: it runs on that machine's
# own Python and packages, not the venv, and installs nothing. Without a GPU it rehearses under the
# CUDA simulator. `make gpu-check OUT=folder` writes folder/gpu_check.md and the logs; PARTS="..." runs
# only those parts, in that order.
GPU_PYTHON ?= python3

gpu-check:
	$(if $(OUT),,$(error give the report's folder: make gpu-check OUT=folder))
	PYTHONPATH=$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH)) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py \
		--out $(OUT) $(if $(PARTS),--parts $(PARTS))

# Numba caches compiled CPU kernels in __pycache__ (an edit of any kernel source recompiles them
# on the next run); this deletes the cache.
clean-cache:
	find dcn_numba -name '*.nbi' -delete -o -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) $(TORCH_VENV) runs .pytest_cache .hypothesis
