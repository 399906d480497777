# The two commands: `make run` (demo pipeline end to end) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test venv clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rekindle and its dependencies into $(VENV) (about a minute the first time) ..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/rekindle generate --scale demo
	$(BIN)/rekindle run

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	-$(BIN)/rekindle warehouse stop
	rm -rf .rekindle
