# Agent Farm: every task a person or CI runs goes through this file.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
CODE := service jobs crews

.PHONY: help install run test test-fast lint format typecheck check lock up down bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# --compile-bytecode: every worker the suite starts imports crewai, and where PYTHONDONTWRITEBYTECODE
# is set (CI images often do) Python would compile it from source each time: 6.5 s instead of 4.3 s.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip install -q --python $(PY) --require-hashes --compile-bytecode -r requirements-dev.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the locked dependencies and the project

PORT ?= 8000
REDIS_PORT ?= 6390
run: install ## Start Redis, the API and a worker (PORT=8000 REDIS_PORT=6390; offline demo model unless AGENTFARM_LLM_MODEL is set)
	@$(VENV)/bin/agentfarm dev --port $(PORT) --redis-port $(REDIS_PORT)

test: install ## Run the whole test suite on 2 xdist workers (each starts its own redis-server and scripted LLM)
	$(PY) -m pytest -n 2

test-fast: install ## Unit tests only: no Redis, no LLM server, no process started (under a minute)
	$(PY) -m pytest tests/unit -m "not slow"

lint: install ## ruff: lint and formatting check
	$(VENV)/bin/ruff check $(CODE) tests
	$(VENV)/bin/ruff format --check $(CODE) tests

format: install ## ruff: fix what can be fixed and format
	$(VENV)/bin/ruff check --fix $(CODE) tests
	$(VENV)/bin/ruff format $(CODE) tests

typecheck: install ## mypy --strict on the service's packages
	$(VENV)/bin/mypy --strict $(CODE)

check: lint typecheck test ## lint, typecheck and test, as before a commit

B ?=
bench: install ## Benchmarks (SPEC §10; needs redis-server and wrk): writes docs/benchmarks.md; B=b3 runs one suite
	$(PY) -m bench $(if $(B),--only $(B))

lock: install ## Re-resolve requirements*.lock from pyproject.toml (hashed, no download addresses)
	$(UV) pip compile -q --universal --generate-hashes pyproject.toml -o requirements-api.lock
	$(UV) pip compile -q --universal --generate-hashes --extra worker pyproject.toml -o requirements.lock
	$(UV) pip compile -q --universal --generate-hashes --extra worker --extra dev pyproject.toml -o requirements-dev.lock

up: ## Start the full stack with compose.yaml (needs a container engine and a .env; see deploy/README.md)
	docker compose up -d --build

down: ## Stop the compose stack
	docker compose down
