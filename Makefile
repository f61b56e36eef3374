# The two commands of the README: `make run` and `make test`.
# Both create .venv when it is missing and reinstall when pyproject.toml, setup.py or a
# compiled source changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench build clean-build clean

# The modules setup.py compiles (mypyc; its COMPILED_PATTERNS, checked against this
# list by tests/meshproxy/test_compiled.py): an edit rebuilds them, since the compiled
# module is what `import` loads (tests/conftest.py refuses to test a stale build).
COMPILED := $(wildcard meshproxy/http/*.py) meshproxy/router.py $(wildcard meshproxy/tcp/*.py) \
	meshproxy/listener.py meshproxy/poller.py meshproxy/cluster.py meshproxy/endpoint.py meshproxy/metrics.py \
	$(addprefix meshproxy/balance/,base.py hashing.py least_request.py maglev.py \
	                               peak_ewma.py random_pick.py ring_hash.py round_robin.py)

$(STAMP): pyproject.toml setup.py $(COMPILED)
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

## Install, compiling the request path (interpreted instead:
## make clean-build && MESH_COMPILE=0 make build).
build: $(STAMP)

## Remove the compiled modules (the sources then run interpreted).
clean-build:
	rm -rf build
	find meshproxy -name '*.so' -delete
	rm -f ./*__mypyc*.so
	rm -f $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

## The benchmarks of loadtests/ (need nginx, haproxy and wrk).
bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

clean: clean-build
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
