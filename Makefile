# updraft: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install checkov demo test test-unit gpu-check images localstack-test clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "updraft needs Python 3.11 or newer (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt holds the versions measured together; see ENVIRONMENT notes in the README.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,torch,aws]'
	touch $(STAMP)

# checkov (updraft infra validate) lives in its own venv: its pins conflict with updraft's.
CHECKOV := $(VENV)/tools/checkov/bin/checkov
$(CHECKOV): infra/checkov-requirements.txt
	$(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/python -m pip install --quiet --no-deps -r infra/checkov-requirements.txt
	touch $(CHECKOV)

checkov: $(CHECKOV)

install: $(STAMP) $(CHECKOV)

demo: $(STAMP)
	$(BIN)/updraft demo

test: $(STAMP) $(CHECKOV)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) $(CHECKOV)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# GPU tests, then the kernel benchmark (benchmarks/gpu_kernels.py), on a machine with an NVIDIA GPU,
# CuPy, NumPy and pandas; Dask, Prefect and boto3 are not needed (--confcutdir keeps pytest away from
# tests/conftest.py, which starts moto). Run from the checkout: `make gpu-check`, or
# `make gpu-check GPU_PYTHON=/path/to/python3 GPU_BENCH_ARGS="--rows 5000000"`.
# Where that Python has no pytest, carry its wheels in .whl/ (fetched where pip can reach PyPI:
# `python3 -m pip download --only-binary=:all: --python-version 3.12 -d .whl pytest`, which brings
# pluggy, iniconfig and packaging too); the target installs .whl/*.whl into a temporary folder.
GPU_PYTHON ?= python3
GPU_BENCH_ARGS ?=
gpu-check:
	@site=""; \
	if ! $(GPU_PYTHON) -c 'import pytest' 2>/dev/null; then \
	  if ! ls .whl/pytest-*.whl >/dev/null 2>&1; then \
	    echo "gpu-check: $(GPU_PYTHON) cannot import pytest and .whl/ holds no pytest wheel (see the Makefile comment above gpu-check)" >&2; \
	    exit 1; \
	  fi; \
	  site=$$(mktemp -d); \
	  $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target "$$site" .whl/*.whl || exit 1; \
	fi; \
	export PYTHONPATH="$(CURDIR)$${site:+:$$site}$${PYTHONPATH:+:$$PYTHONPATH}"; \
	$(GPU_PYTHON) -m pytest tests/gpu -m gpu -q -p no:cacheprovider --confcutdir=tests/gpu && \
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_kernels.py $(GPU_BENCH_ARGS)

# The container images (images/*/Dockerfile) as updraft-<image>:<tag>, tagged with the commit by
# default; needs a Docker engine. `make images IMAGES_ARGS="--gpu"` adds the CUDA training image,
# `IMAGES_ARGS="--tag v1 --only training"` picks. Push: `updraft images push --project NAME --stack STACK`.
IMAGES_ARGS ?=
images: $(STAMP)
	$(BIN)/updraft images build $(IMAGES_ARGS)

# The local-target end-to-end test (tests/localstack) against LocalStack: localstack/host.py starts it with
# docker compose where a Docker engine answers, else on this host under Python 3.13 (its own venv in
# .venv-localstack/, built once), waits for its init hooks, runs the tests and always stops it.
localstack-test: $(STAMP)
	$(BIN)/python localstack/host.py run -- $(BIN)/python -m pytest tests/localstack -m localstack $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) updraft-runs build *.egg-info
