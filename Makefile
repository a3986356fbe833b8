# exitwise: `make demo` (the whole pipeline on Fashion-MNIST) and `make test` (the test suite).
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all venv data test lint typecheck pytest test-docker demo demo-stop results gpu-carry clean help

all: help

help:
	@echo "make demo   train (if needed), calibrate, export and serve the Fashion-MNIST demo model"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make test-docker   build both Docker images without a registry and test them (root)"
	@echo "make demo-stop     stop the demo server"
	@echo "make results       L2W vs uniform on Fashion-MNIST (training about 2.2 hours on a 2-core CPU: docs/results/results.json)"
	@echo "make gpu-carry     prepare .gpu-carry/ for scripts/gpu-check.sh on a lent GPU (docs/gpu-check.md)"

$(STAMP): pyproject.toml scripts/install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PYTHON=$(PY) scripts/install.sh all,dev
	touch $(STAMP)

venv: $(STAMP)

data: venv
	PYTHON=$(PY) scripts/get-fashion-mnist.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# The tests write the small data files they need; real Fashion-MNIST is for the demo and results.
# The Docker image tests have their own target (they build images for minutes when cold).
# Two worker processes (pytest-xdist); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
pytest: venv
	$(VENV)/bin/pytest -m "not docker" -n $(TEST_WORKERS) --dist loadfile

# Build both images without a registry (scripts/docker-build.sh: Debian base image, wheelhouse)
# and run them (tests/e2e/test_docker_image.py); skipped where no Docker engine can run. The CPU
# image's torch: the CPU wheel this machine's pip finds (torch 2.13.0+cpu in its find-links; the
# CPU index download.pytorch.org is not reachable here). Where it is reachable:
#   make test-docker DOCKER_CPU_TORCH=2.14.1 DOCKER_CPU_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
DOCKER_CPU_TORCH ?= 2.13.0+cpu
DOCKER_CPU_TORCH_INDEX_URL ?=
test-docker: venv
	CPU_TORCH_VERSION=$(DOCKER_CPU_TORCH) CPU_TORCH_INDEX_URL=$(DOCKER_CPU_TORCH_INDEX_URL) \
	  $(VENV)/bin/pytest -m docker

test: lint typecheck pytest

demo: venv
	ALLOW_DOWNLOAD=1 PYTHON=$(PY) scripts/get-fashion-mnist.sh
	$(PY) scripts/demo.py

demo-stop: venv
	$(PY) scripts/demo.py stop

results: venv data
	$(PY) scripts/results.py run
	$(PY) scripts/results.py report

# What scripts/gpu-check.sh needs on a GPU machine without network (docs/gpu-check.md): wheels,
# wrk, Fashion-MNIST and the demo bundle in .gpu-carry/, and the device tool's call to make.
gpu-carry: venv data
	PYTHON=$(PY) scripts/gpu-carry.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
