# statem: `make demo` runs the main job on embedded SQLite; `make test` runs the suite.
# Both build the virtualenv from nothing on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export STATEM_TEST_PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install demo test lint typecheck pytest postgres chromium bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

DEMO_DB ?= sqlite:///statem-demo.db

# statem demo uses its own statem-demo.db in this directory (never your statem.db)
demo: install
	$(BIN)/statem --db $(DEMO_DB) demo
	@echo "Browse it in the console: $(BIN)/statem --db $(DEMO_DB) serve   (then open http://127.0.0.1:8080/)"

postgres:
	@bash scripts/ensure-postgres.sh

# the console tests drive a real headless Chromium: install Debian's when it is missing
chromium:
	@bash scripts/ensure-chromium.sh

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy statem

pytest: install postgres chromium
	$(BIN)/pytest -q

test: lint typecheck pytest

BENCH_VENV  = .venv-bench
BENCH_STAMP = $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml bench/requirements-peer.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[postgres]' -r bench/requirements-peer.txt
	touch $(BENCH_STAMP)

# every benchmark (statem's own, then the DBOS comparison) and one summary table
bench: install postgres $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: install postgres $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .venv-bench demo.db* statem-demo.db* statem.db* test-artifacts .pytest_cache .mypy_cache .ruff_cache build dist
