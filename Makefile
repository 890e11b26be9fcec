# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	# uv resolves azureml-core's many pins in seconds where pip backtracks for minutes.
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/run_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts .dbxml spark-warehouse
