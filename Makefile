# The two set-up commands the README promises: `make run` and `make test`.
# Each creates (or reuses) .venv with Python 3.11 and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint test-agent-py39

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.runtime-installed

run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py run_portal

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Ruff: lint and import order (pyproject.toml). .ci/run runs it before the tests.
lint: $(VENV)/.test-installed
	$(BIN)/ruff check .

# The agent's own tests under the oldest Python it supports (3.9), with only its
# three dependencies installed: proof that agent_client/ needs no Django.
PYTHON39 ?= python3.9
VENV39 := .venv39

$(VENV39)/.installed: agent_client/requirements.txt
	$(PYTHON39) -m venv $(VENV39)
	$(VENV39)/bin/python -m pip install --quiet --upgrade pip
	$(VENV39)/bin/python -m pip install --quiet -r agent_client/requirements.txt pytest
	touch $@

test-agent-py39: $(VENV39)/.installed
	$(VENV39)/bin/python -m pytest -p no:django -W ignore::pytest.PytestConfigWarning tests/agent $(PYTEST_ARGS)
