# `make test` and `make demo` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -x tests

demo: $(STAMP)
	$(VENV)/bin/irtool demo

bench: $(STAMP)
	$(PY) tools/bench_import.py

clean:
	rm -rf $(VENV) build *.egg-info
