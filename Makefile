PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PG15 ?= postgresql://postgres@127.0.0.1:5432/postgres

.DEFAULT_GOAL := help
.PHONY: help demo test test-pg15 lint bench clean stop-db

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/reporting: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/reporting

demo: $(BIN)/reporting ## set up .venv, start the embedded PostgreSQL, seed a demo school, run the API and both workers
	$(BIN)/reporting demo

test: $(BIN)/reporting ## install what the tests need and run them all (embedded PostgreSQL)
	./scripts/system-deps.sh
	$(BIN)/pytest

test-pg15: $(BIN)/reporting ## the suite against the PostgreSQL at 127.0.0.1:5432
	TEST_DATABASE_URL=$(PG15) $(BIN)/pytest

lint: $(BIN)/reporting ## ruff and mypy --strict
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: $(BIN)/reporting ## run every benchmark in bench/ (slow: loads 10M attempts)
	./scripts/system-deps.sh
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

stop-db: ## stop the embedded PostgreSQL of ./.reporting
	$(BIN)/reporting db stop

clean: ## remove the virtualenv and the demo data
	-$(BIN)/reporting db stop --force
	rm -rf $(VENV) .reporting
