# Quick start:  make demo   (set up .venv, run the main job on the embedded default)
#               make test   (set up .venv, run the default test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: setup demo test test-all ci-smoke lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/detco-bench demo --out $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -m "not slow"

# The CI regression: the demo pipeline with fixed seeds, checked against detco_bench/references/smoke.csv.
ci-smoke: setup
	$(BIN)/detco-bench demo --out runs/ci-smoke --check

test-all: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check detco_bench pretrain tests benchmarks

bench: setup
	$(BIN)/python benchmarks/pretrain_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
