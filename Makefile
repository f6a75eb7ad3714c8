# Two commands for a newcomer with python3, pip and make: `make run` and `make test`.
# Both create .venv and install the locked dependencies when the lock file changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit lock clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shortfsm demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check fsm telegram_ingest binance tests
	$(BIN)/ruff format --check fsm telegram_ingest binance tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n auto --spec-report=var/spec-report.json

# Regenerate requirements.lock (needs network to the package index and `uv`).
lock:
	uv pip compile pyproject.toml --extra dev --extra distributed --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
