# Developer entry points. The logic lives in scripts/ (scripts/test, scripts/demo, scripts/kafka,
# scripts/postgres) so that it can change without touching this file.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PYTEST_ARGS ?=
export VENV PYTEST_ARGS

.PHONY: help venv demo demo-kafka lint test kafka-start kafka-stop pg-start pg-stop

help:
	@echo "make venv         create $(VENV) with $(PYTHON) and pip install -e '.[dev]' (again when pyproject.toml changes)"
	@echo "make test         venv + Kafka broker (scripts/kafka) + lint + pytest \$$PYTEST_ARGS + bench --quick (scripts/test)"
	@echo "make lint         ruff check . and mypy"
	@echo "make demo         the demo app on http://127.0.0.1:8000 (scripts/demo)"
	@echo "make demo-kafka   the same on a local Kafka broker: broker + writer + worker + web server"
	@echo "make kafka-start | kafka-stop | pg-start | pg-stop"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@test -x $(VENV)/bin/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -e '.[dev]'
	@touch $@

demo: venv
	bash scripts/demo

demo-kafka: venv
	bash scripts/demo --kafka

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: venv
	bash scripts/test

kafka-start:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

pg-start:
	scripts/postgres start

pg-stop:
	scripts/postgres stop
