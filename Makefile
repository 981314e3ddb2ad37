# Lockstep: one virtual environment (.venv), created or reused by every target.
#   make demo   set everything up, then run the main job on the embedded default (tiny CPU demo)
#   make test   set everything up, then lint and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch (taken from local disk on our dev machines). GPU clusters: TORCH="torch==2.13.0 --index-url <cuda index>".
TORCH ?= torch==2.13.0
# Debian packages the sandboxed reward worker needs (installed when run as root with apt-get; otherwise explained).
DEB_PACKAGES := bubblewrap
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test lint clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else "Python 3.11 or 3.12 is required; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "WARNING: missing system packages:$$missing — install them (Debian/Ubuntu: sudo apt-get install$$missing)."; \
	    echo "         Without bubblewrap the reward sandbox falls back to a weaker isolation mode (see docs/rewards.md)."; \
	  fi; \
	fi

setup: system-deps $(VENV)/.installed

demo: setup
	$(PY) launch/demo.py

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs outputs wandb .pytest_cache .ruff_cache
