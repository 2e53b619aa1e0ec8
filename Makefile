# Two commands for a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast lint bench

$(BIN)/bulkpix: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/bulkpix

install: $(BIN)/bulkpix

demo: install
	$(BIN)/bulkpix run configs/demo.yaml

# Everything, the `slow` tests included (about three minutes on two cores).
test: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The quick loop while developing: the suite without the `slow` tests.
test-fast: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m benchmarks
