# Two commands: `make run` (set up, then start the newest chapter on 127.0.0.1:5678)
# and `make test` (set up, then lint, run the whole suite and build the docs strictly).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MUTATION_STAMP := $(VENV)/.mutation-installed
NEWEST := $(lastword $(sort $(notdir $(wildcard chapters/[0-9][0-9]_*))))

.PHONY: run test lint docs serve-docs mutate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is needed, this is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# setuptools warns on every editable install that a folder named like a package may
	@# shadow it: here the folders *are* the packages, so the warning says nothing.
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e '.[test,docs]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m chapters.$(NEWEST)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test: lint docs
	$(PY) -m pytest

serve-docs: $(STAMP)
	$(PY) -m mkdocs serve

# Mutation testing, not part of `make test` (it takes minutes): mutmut mutates each module
# of the table in tools/mutate.py and runs that module's tests against every mutant.
# `make mutate MUTATE_ARGS=common/protocol.py` runs one row; `--help` says more.
$(MUTATION_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,docs,mutation]'
	@touch $(MUTATION_STAMP)

mutate: $(MUTATION_STAMP)
	$(PY) -m tools.mutate $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .hypothesis .mutate
