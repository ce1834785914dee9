# One command each, on a fresh machine:  `make loop` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup postgres loop test lint bench clean

setup: $(VENV)/.installed postgres
	@echo "set up: 'source $(VENV)/bin/activate' puts grokloop on your PATH"

# PostgreSQL (Debian's package): the shared store's catalog (storage/lake.py). Its tests and
# bench/store.py start a server of their own on a temporary directory; none is left running.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		echo "installing PostgreSQL (apt-get install postgresql): the shared-store tests start one"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# requirements.lock pins every transitive dependency (torch==2.13.0 is the CPU wheel on this disk).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

loop: setup
	$(BIN)/grokloop run loop

# The suite on every core, one pytest-xdist worker each (4 at most: near there the longest test, the
# README's, ~3 min, sets the time); the 15 slowest tests are listed at the end.
test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n auto --maxprocesses 4 --durations 15

# Each prints its figures and ratios; the grokking grid runs at its smoke size here (drop --quick for
# the published setup: hours on a CPU).
bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/agent_throughput.py
	$(BIN)/python bench/collector.py
	$(BIN)/python bench/curate.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/cluster.py --episodes 300 --steps 60
	$(BIN)/python bench/grokking.py --quick

clean:
	rm -rf $(VENV) .grokloop .pytest_cache .ruff_cache
