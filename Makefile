# gfm: two commands do everything on a fresh machine (Python >= 3.11, pip, git, make):
#   make run    set up, then run the main job on the embedded defaults
#   make test   set up, then lint and run the whole test suite (make test-unit: the fast part)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No network telemetry; keep logs to what matters (see shared stack notes).
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# Stage commands in dvc.yaml call `gfm`: resolve it (and dvc) from the project environment.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-unit lint format bench faults clean

install: $(STAMP)

# torch first: pinned to the CPU wheel on local disk, so the resolver never pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

run: install
	$(BIN)/gfm run

lint: install
	$(BIN)/ruff check gfm flows tests benchmarks
	$(BIN)/ruff format --check gfm flows tests benchmarks

format: install
	$(BIN)/ruff format gfm flows tests benchmarks
	$(BIN)/ruff check --fix gfm flows tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

# the fast inner loop: no real services, nothing marked slow (under 2 minutes on 2 cores)
test-unit: install
	$(BIN)/python -m pytest -q -m "not integration and not slow"

bench: install
	$(BIN)/python -m benchmarks.generation

# the fault-injection suite (issue 15) with its results table: benchmarks/results/faults.csv, .md
faults: install
	$(BIN)/python -m benchmarks.faults

clean:
	rm -rf .data.partial .pytest_cache .ruff_cache
