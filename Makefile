# Two commands a new user needs: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# The simulator's port for `model-router sim-fault` (README: watch a provider fail); empty: any.
SIM_PORT ?=
SRC := proxy probes tests $(wildcard benchmarks)

.PHONY: serve test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# pip 23.2's resolver picks ancient boto3/aioboto3 pairs; upgrade it first.
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cluster]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench,cluster]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/model-router serve --demo --host $(HOST) --port $(PORT) $(if $(SIM_PORT),--sim-port $(SIM_PORT))

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/ruff check $(SRC)
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict proxy probes

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The benchmark suite (~5 min on 2 cores; not a CI gate): figures in benchmarks/out/<time>/.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
