# `make test` and `make demo` set up .venv from scratch on a fresh machine.
# torch is installed first and pinned: the CPU wheel of 2.13.0 is available
# locally, while any unpinned request would pull the CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-quick bench clean

$(STAMP): pyproject.toml setup.py synflow_plugin/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[all,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m synflow_plugin demo

demo-quick: $(STAMP)
	$(PY) -m synflow_plugin demo --quick

bench: $(STAMP)
	$(PY) benchmarks/synflow_speed.py

clean:
	rm -rf $(VENV) runs build dist *.egg-info
