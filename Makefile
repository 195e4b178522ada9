# The two commands of the README: `make dev` runs the pipeline, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
IDP := $(VENV)/bin/idp

.PHONY: dev test setup stack down lint bench

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Install everything, start Kafka and Redis, create the topics, start the worker, feed it a
# generated journey and print a summary. The stack keeps running: `make down` stops it.
dev: setup
	$(IDP) demo

stack: setup
	$(IDP) stack up

down: setup
	$(IDP) stack down

# The whole suite against the real Kafka and Redis it starts itself.
test: setup
	$(IDP) stack up
	$(VENV)/bin/pytest -q

# ruff's lint rules (pyproject.toml), its formatter, and mypy over pipeline and schemas.
lint: setup
	$(VENV)/bin/ruff check pipeline schemas tests scripts
	$(VENV)/bin/ruff format --check pipeline schemas tests scripts
	$(VENV)/bin/mypy
