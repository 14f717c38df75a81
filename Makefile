# The README's two set-up commands. Each creates the virtualenv it needs on a fresh machine: the pinned
# requirements, then this project installed editable (pip install -e .), so every script and test imports it as is.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist workers: one per core, at most 4 (each holds its own JAX and MuJoCo; the scripts the tests start add more)
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

.PHONY: demo test test-fast bench lint

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.installed   ## small generated dataset -> BC pretraining -> TRQAM -> eval -> report (~7.5 min, 2 CPU cores)
	$(PY) examples/demo.py

test: $(VENV)/.installed   ## the whole test suite (CPU; ~15 min on a 2-core VM: ~100 script runs in subprocesses, each ~10-25 s of imports, env builds, tracing and compiling)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(JOBS) --durations=25 tests

test-fast: $(VENV)/.installed   ## the suite without the subprocess runs marked slow (under 3 min on 2 cores)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(JOBS) -m "not slow" tests

bench: $(VENV)/.installed  ## update throughput at the paper's size and a small size
	$(PY) benchmarks/bench_update.py --json benchmarks/last_run.json

lint: $(VENV)/.installed
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check .
