# The two commands of the README: `make run` and `make test`.
# Both create .venv when it is missing and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

## Start the whole system on this machine (see README).
run: $(STAMP)
	$(BIN)/meshctl up --demo

## Lint, then run every test. Fails when a test fails or when no test ran.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

## The benchmarks of loadtests/ (need nginx, haproxy and wrk).
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
