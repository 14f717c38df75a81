# The README's two set-up commands. Each creates the virtualenv it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: demo test bench lint

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed   ## small generated dataset -> BC pretraining -> TRQAM -> eval -> report (~7.5 min, 2 CPU cores)
	$(PY) examples/demo.py

test: $(VENV)/.installed   ## the test suite (CPU, ~10 min on 2 idle cores)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed  ## update throughput at the paper's size and a small size
	$(PY) benchmarks/bench_update.py --json benchmarks/last_run.json
