# Two commands set up and use everything on a fresh machine (see README):
#   make demo   -> .venv + the whole pipeline on configs/tiny.yaml
#   make test   -> .venv + the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignflow-installed

.PHONY: demo test test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned, so nothing later pulls the multi-GB CUDA wheels (STACK.md)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alignflow run configs/tiny.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

test-all: $(STAMP)
	# the browser test drives Debian's chromium, never a downloaded browser (STACK.md)
	command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver
	# the deployment test's PostgreSQL (Debian's, run as the postgres user)
	test -x /usr/lib/postgresql/15/bin/initdb || apt-get install -y -q postgresql
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs mlruns mlflow.db .pytest_cache
