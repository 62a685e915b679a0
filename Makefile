PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

## make run: the daemon on the embedded default (embedded PostgreSQL, sql primary, file backup)
run: $(STAMP)
	$(BIN)/secretmirror serve

## make test: ruff, mypy and the whole test suite, starting every service it needs
test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	tests/ensure-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30

## make bench: run bench/ and write bench/results/*.json
bench: $(STAMP)
	tests/ensure-tools wrk
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
