# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test compat bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	# uv for speed here (its cache is warm); `make compat` proves the plain-pip install per runtime.
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[spark,sdk-v1,test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/run_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=25 tests

# The runtime matrix alone: one environment per compat/*.txt, plain pip, the core suite in each.
# .ci/run passes COMPAT_ARGS=--ci: uv installs after the plain-pip dry run, the CI tests only.
COMPAT_ARGS ?=
compat: $(VENV)/.installed
	$(PY) compat/run_matrix.py $(COMPAT_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .compat mlflow.db mlartifacts .dbxml spark-warehouse demo-run test-artifacts
