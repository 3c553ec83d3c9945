# Two commands on a fresh machine: `make run` (the daemon on its bundled demo audio) and `make test`.
# Both create .venv on first use. The constraints file keeps pip on the CPU build of torch 2.13.0;
# see README.md, "GPU install", for CUDA machines.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
EXTRAS  ?= cpu,train,dev,cluster
ARGS    ?=
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

run: setup
	$(VENV)/bin/ser-listen --device demo $(ARGS)

# pytest exits 5 when it collected nothing: a test run that tests nothing is a failure here.
test: setup
	$(VENV)/bin/pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# Benchmarks run as modules of the bench package, from the repository root; each writes bench/results/*.json
# (python -m bench.tables prints their tables again from that JSON).
bench: setup
	$(PY) -m bench.engine
	$(PY) -m bench.daemon

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
