# Set-up and everyday entry points.
#
#   make setup   system packages, .venv, node_modules, then `python -m webfl.build`
#   make serve   set up, then run the server on http://127.0.0.1:8000
#   make test    set up, then pytest (extra arguments: make test PYTEST_ARGS='-k build')
#   make bench   set up, then run every bench/*.py
#
# Every set-up step is idempotent: a stamp holds the sha256 of the inputs it was made
# from (content, not mtimes, so a git checkout that touches files without changing
# them costs nothing), and the build skips outputs that are up to date. A second
# `make setup` takes a couple of seconds.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.webfl-setup-stamp
NPM_STAMP := node_modules/.webfl-setup-stamp
CHROMIUM := /usr/bin/chromium
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system venv node build serve test bench

setup: system venv node build

# Chromium drives the browser tests; Debian's build is the one that works here. clang and
# lld compile the WebAssembly matrix-multiply kernel (without them the page uses NumPy).
system:
	@missing=""; \
	[ -x $(CHROMIUM) ] || missing="chromium"; \
	command -v clang >/dev/null && command -v wasm-ld >/dev/null || missing="$$missing clang lld"; \
	if [ -z "$$missing" ]; then \
	  echo "[setup] system: chromium, clang, lld present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "[setup] system: installing Debian's$$missing ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update; \
	  apt-get install -y $$missing; \
	else \
	  echo "[setup] system:$$missing missing and not root, skipped;" \
	       "the browser tests need chromium, the fast kernel clang and lld (apt-get install$$missing)" >&2; \
	fi
	@# Real Redis, PostgreSQL and nginx for the scale-out tests: tests/services.py starts
	@# its own on loopback and never uses a system-wide instance the packages may start.
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then \
	  echo "[setup] redis-server, postgresql, nginx: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "[setup] installing Debian's$$missing ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=300 update; \
	  apt-get -o DPkg::Lock::Timeout=300 install -y $$missing; \
	else \
	  echo "[setup]$$missing missing and not root, skipped;" \
	       "the scale-out service tests skip without them" >&2; \
	fi

venv:
	@if ! $(PY) -c '' 2>/dev/null; then \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "[setup] venv: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11+ is needed (make PYTHON=python3.12 ...)" >&2; exit 1; }; \
	  echo "[setup] venv: creating $(VENV) with $$($(PYTHON) --version)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	fi; \
	want="$$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"; \
	if [ "$$(cat $(VENV_STAMP) 2>/dev/null)" = "$$want" ]; then \
	  echo "[setup] venv: up to date"; \
	else \
	  echo "[setup] venv: pip install -c constraints.txt -e '.[test]' ..."; \
	  $(PY) -m pip install -c constraints.txt -e '.[test]'; \
	  echo "$$want" > $(VENV_STAMP); \
	fi

node:
	@want="$$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"; \
	if [ "$$(cat $(NPM_STAMP) 2>/dev/null)" = "$$want" ]; then \
	  echo "[setup] node_modules: up to date"; \
	else \
	  echo "[setup] node_modules: npm ci ..."; \
	  npm ci --no-audit --no-fund; \
	  echo "$$want" > $(NPM_STAMP); \
	fi

build: venv node
	@$(PY) -m webfl.build

serve: setup
	$(VENV)/bin/webfl serve --host $(HOST) --port $(PORT) --data-dir data

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@for script in bench/*.py; do \
	  [ -e "$$script" ] || continue; \
	  echo "[bench] $$script"; \
	  $(PY) "$$script"; \
	done
