# The two commands: `make run` (demo pipeline end to end) and `make test` (lint, then the whole suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Exact versions of every dependency (what CI tested); `make lock` regenerates it.
LOCK   := requirements.lock
LOGS   := .rekindle/logs
INSTALL_LOG := $(LOGS)/install.log
LOCK_VENV   := .rekindle/lock-venv
PIP    := python -m pip --disable-pip-version-check

.PHONY: run test lint lock venv clean

# Quiet: one line, pip's output goes to $(INSTALL_LOG) (its tail is printed if the install fails).
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	@mkdir -p $(LOGS)
	@echo "installing rekindle and its dependencies into $(VENV) (about a minute the first time; log: $(INSTALL_LOG)) ..."
	@{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } >$(INSTALL_LOG) 2>&1 \
		&& $(BIN)/$(PIP) install -c $(LOCK) -e '.[test,bench]' >>$(INSTALL_LOG) 2>&1 \
		|| { echo "install failed; the end of $(INSTALL_LOG):"; tail -n 25 $(INSTALL_LOG); exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@$(BIN)/rekindle generate --scale demo --keep-existing
	@$(BIN)/rekindle run

# ruff (Python) and sqlfluff (the dbt project, .sqlfluff); the pre-commit hooks run the same.
lint: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/sqlfluff lint dbt

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist worksteal

# Re-resolve the dependencies to the newest versions pyproject.toml allows, in a fresh venv, and pin
# them all in $(LOCK) (the project itself excluded). Then `make` installs exactly those.
lock:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	@mkdir -p $(LOGS) && rm -rf $(LOCK_VENV)
	@echo "resolving the dependencies in a fresh $(LOCK_VENV) (a few minutes; log: $(LOGS)/lock.log) ..."
	@{ $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/$(PIP) install -e '.[test,bench]'; } >$(LOGS)/lock.log 2>&1 \
		|| { echo "resolve failed; the end of $(LOGS)/lock.log:"; tail -n 25 $(LOGS)/lock.log; exit 1; }
	@{ echo "# Exact versions \`make\` installs (pip install -c $(LOCK) -e '.[test,bench]'); what CI tested."; \
	   echo "# Regenerate with \`make lock\` (a fresh venv, the newest versions pyproject.toml allows, pip freeze)."; \
	   $(LOCK_VENV)/bin/$(PIP) freeze --exclude-editable; } >$(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK) ($$(grep -c '==' $(LOCK)) pins); run make to install them"

clean:
	-$(BIN)/rekindle warehouse stop
	rm -rf .rekindle
