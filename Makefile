# exitwise: `make demo` (the whole pipeline on Fashion-MNIST) and `make test` (the test suite).
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: all venv data test lint typecheck pytest demo demo-stop results clean help

all: help

help:
	@echo "make demo   train (if needed), calibrate, export and serve the Fashion-MNIST demo model"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make demo-stop     stop the demo server"
	@echo "make results       L2W vs uniform on Fashion-MNIST (about 2.5 hours on a 2-core CPU)"

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
pytest: venv
	$(VENV)/bin/pytest

test: lint typecheck pytest

demo: venv
	ALLOW_DOWNLOAD=1 PYTHON=$(PY) scripts/get-fashion-mnist.sh
	$(PY) scripts/demo.py

demo-stop: venv
	$(PY) scripts/demo.py stop

results: venv data
	$(PY) scripts/results.py run
	$(PY) scripts/results.py report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
