# The two set-up commands the README promises: `make run` and `make test`.
# Each creates (or reuses) .venv with Python 3.11 and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

# Where `make run` serves: make run PORT=8001 ADDR=0.0.0.0
ADDR ?= 127.0.0.1
PORT ?= 8000
MANAGE := $(BIN)/python manage.py

.PHONY: run test lint test-agent-py39 token release admin-password

# Set-up steps say what they do on stderr, so that `make token` prints only the token on stdout
# even the first time (or after requirements.txt changed).
$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON)" >&2
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	@echo "installing requirements.txt into $(VENV)" >&2
	@$(BIN)/python -m pip install --quiet -r requirements.txt >&2
	@touch $@

$(VENV)/.test-installed: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.runtime-installed

run: $(VENV)/.runtime-installed
	@$(MANAGE) run_portal --addr "$(ADDR):$(PORT)"

# Helpers for what the README and the admin show (each installs the runtime first, like `run`).
# A registration token, printed alone: make token LABEL=rack-2 SEATS=5 EXPIRES=24h
LABEL ?= enrolment
SEATS ?= 1
EXPIRES ?= 24h
token: $(VENV)/.runtime-installed
	@$(MANAGE) create_registration_token --label "$(LABEL)" --seats "$(SEATS)" --expires-in "$(EXPIRES)"

# A signed agent release that installers and agents download: make release VERSION=0.1.0
release: $(VENV)/.runtime-installed
	@test -n "$(VERSION)" || { echo "make release needs a version: make release VERSION=0.1.0" >&2; exit 2; }
	@$(MANAGE) build_agent_release --version "$(VERSION)"

# Set a new password for an admin account (asked twice, hidden): make admin-password [USER_NAME=admin]
USER_NAME ?= admin
admin-password: $(VENV)/.runtime-installed
	@$(MANAGE) changepassword "$(USER_NAME)"

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
