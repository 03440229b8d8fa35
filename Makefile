# Cacheon: `make demo` runs the local demo, `make test` runs the whole suite.
# Both work from a clean clone on a fresh machine: they install what they need first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PODS ?= 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TIMED := scripts/timed

.PHONY: help test demo system venv lint typecheck test-unit test-services vllm-venv test-vllm

help:
	@echo "make demo   run a validator round locally on the embedded defaults (PODS=2: two at once)"
	@echo "make test   install what the tests need, then lint, type-check and run every test"

system:
	@$(TIMED) "install system packages" scripts/install-system-packages

$(STAMP): pyproject.toml
	@$(TIMED) "install python packages" bash -c '\
	  set -euo pipefail; \
	  [ -x $(BIN)/python ] || python3 -m venv $(VENV); \
	  $(BIN)/python -m pip install --quiet --upgrade pip; \
	  $(BIN)/python -m pip install --quiet -e ".[validator,miner,dev]"; \
	  touch $(STAMP)'

venv: $(STAMP)

lint: venv system
	@$(TIMED) "ruff check" $(BIN)/ruff check .
	@$(TIMED) "ruff format --check" $(BIN)/ruff format --check .
	@$(TIMED) "import contracts" $(BIN)/lint-imports
	@$(TIMED) "promtool check rules" promtool check rules deploy/prometheus-alerts.yml
	@$(TIMED) "promtool test rules" promtool test rules deploy/prometheus-alerts.test.yml

typecheck: venv
	@$(TIMED) "mypy --strict cacheon" $(BIN)/mypy --strict cacheon

test-unit: venv
	@$(TIMED) "tests: unit" scripts/pytest-group "not services and not vllm"

test-services: venv system
	@$(TIMED) "tests: real services" scripts/pytest-group "services and not vllm"

# the CPU vLLM (its own venv) and the tiny model it serves in the final, serial test phase
vllm-venv:
	@$(TIMED) "install vllm venv" scripts/install-vllm-venv
	@$(TIMED) "build tiny qwen2" .venv-vllm/bin/python scripts/build_tiny_qwen2.py build/tiny-qwen2

test-vllm: venv vllm-venv
	@$(TIMED) "tests: vllm (serial)" scripts/pytest-group "vllm"

test: system venv lint typecheck test-unit test-services test-vllm
	@echo "== all phases passed"

demo: system venv
	@$(BIN)/python -m cacheon.testing.demo --workdir .demo --pods $(PODS)
