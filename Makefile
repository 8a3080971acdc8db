# Two commands: `make demo` trains on bundled data, `make test` runs the test suite.
# Each creates .venv and installs what is missing. torch is installed from a pin first,
# so pip never resolves an unpinned torch (which would pull CUDA wheels).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# Code lines of src/gradloop (tools/loc.py): size is a budget; raising it is a decision.
LOC_BUDGET := 9000

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	echo "$(TORCH_PIN)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	command -v chromium >/dev/null || sh tools/install-chromium.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gradloop demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples tools
	$(BIN)/ruff format --check src tests bench examples tools
	$(BIN)/mypy
	$(BIN)/python tools/loc.py --budget $(LOC_BUDGET)

bench: $(STAMP)
	$(BIN)/python bench/loop_overhead.py

docs: $(STAMP)
	$(BIN)/python -m gradloop.cli.reference --out docs/config-reference.md

clean:
	rm -rf $(VENV) runs
