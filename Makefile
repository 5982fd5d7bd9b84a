# pplvi: `make demo` trains a model with a user-written objective; `make test` runs lint + tests.
PYTHON ?= python3.12
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PPLVI_DATA ?= $(abspath ../shared/data)

.PHONY: demo test lint bench venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pplvi demo

lint: $(STAMP)
	$(PY) -m ruff check pplvi tests benchmarks examples

test: lint
	$(PY) -m pytest -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) out
