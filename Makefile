# One-command set-up and entry points. Every install goes through constraints.txt (torch pin: see it).
PY ?= python3
VENV ?= .venv
FIND_LINKS := $(shell pip config get global.find-links 2>/dev/null)
UV_FLAGS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-slow lint typecheck bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/python -m uv pip install --python $(VENV)/bin/python $(UV_FLAGS) -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/safetune demo

# Two tiers: the fast one (plain `pytest`) and the slow one (the end-to-end demos, the multi-process
# launches). CI runs both.
test: setup lint typecheck test-fast test-slow

# The fast tier on every core up to 4 (pytest-xdist; each worker builds its own tiny models): about 1.5
# minutes on 2 cores instead of 3. Plain `pytest` runs it in one process.
test-fast: setup
	$(VENV)/bin/python -m pytest -q tests -m "not slow" -n auto --maxprocesses 4

test-slow: setup
	$(VENV)/bin/python -m pytest -q tests -m slow

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/python bench/sarft_step.py
	$(VENV)/bin/python bench/eval_generation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
