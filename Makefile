# statem: `make demo` runs the main job on embedded SQLite; `make test` runs the suite.
# Both build the virtualenv from nothing on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export STATEM_TEST_PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install demo test lint typecheck pytest postgres bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/statem --db sqlite:///demo.db demo

postgres:
	@bash scripts/ensure-postgres.sh

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy statem

pytest: install postgres
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: install postgres
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo.db* statem.db* .pytest_cache .mypy_cache .ruff_cache build dist
