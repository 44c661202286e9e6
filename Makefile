# zerodown: `make demo` to see it, `make test` to prove it.
#
# `make test` works on a fresh clone of a fresh Debian (as root, or with
# sudo): it creates .venv, installs zerodown with its test extras, installs
# the system packages the suite drives when their binaries are missing, then
# runs ruff, mypy and the whole pytest suite. Set-up steps are stamped, so a
# second `make test` goes straight to the checks.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# apt-get must never run twice at once (venv and check-system may both call it).
.NOTPARALLEL:

VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.zerodown-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist). The suite's e2e tests mostly wait on health
# checks, pauses and drains (one process used 38% of 2 cores: 13 CPU-minutes
# in 17.7), so three at once keep it well inside CI's 20 minutes; worksteal,
# so that no process is left with a queue of long tests at the end.
TEST_WORKERS ?= 3

.PHONY: help venv check-system lint test demo bench

help:
	@echo "make demo          the whole story: deploys under load on 127.0.0.1:8080, then serves"
	@echo "make test          set up, then ruff check, mypy and the whole test suite"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make venv          $(VENV) with zerodown installed editable, extras test and dev, at constraints.txt's versions"
	@echo "make check-system  install nginx, haproxy, redis-server, wrk, curl, rsvg-convert (librsvg2-bin) when missing"
	@echo "make bench         zerodown vs nginx and HAProxy (BENCH_QUICK=1 for a short run)"

venv: $(INSTALLED)

$(BIN)/python:
	scripts/make-venv $(VENV)

# Reinstalled whenever pyproject.toml (dependencies, entry points) or the
# pinned versions change. The constraints keep CI on the versions we tested.
$(INSTALLED): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]' -c constraints.txt
	touch $@

# Fails, naming the binary, when one is still missing after the install attempt.
check-system:
	@scripts/system-deps

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: venv check-system
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

demo: venv
	$(BIN)/zerodown demo

# Not part of `make test`: zerodown against nginx and HAProxy (see bench/README.md).
# About 35 minutes on 2 cores; BENCH_QUICK=1 for a 9 minute smoke run.
bench: venv check-system
	$(BIN)/python bench/run.py
