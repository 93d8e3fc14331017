# keel — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test test-quick lint typecheck pytest bench bench-quick clean help

# The kill-anywhere test's trials (tests/e2e/test_kill_anywhere.py): 30 in the full suite.
KEEL_KILL_TRIALS ?= 30
export KEEL_KILL_TRIALS

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("keel needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)  ## run the bot (long polling, SQLite under ./data)
	$(BIN)/keel run

lint: $(STAMP_DEV)  ## ruff and mypy
	$(BIN)/ruff check bot agents storage tests $(wildcard bench)
	$(BIN)/mypy

pytest: $(STAMP_DEV)  ## the test suite only
	$(BIN)/pytest -q

test: lint pytest  ## lint, type-check and run every test (what CI runs; about 12 min)

test-quick: $(STAMP_DEV)  ## the test suite with 4 kill trials instead of 30 (about 5 min)
	KEEL_KILL_TRIALS=4 $(BIN)/pytest -q

bench: $(STAMP_DEV)  ## full benchmarks (< 10 min on 2 cores)
	$(BIN)/python -m bench

bench-quick: $(STAMP_DEV)  ## quick benchmarks (< 1 min)
	$(BIN)/python -m bench --quick

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
