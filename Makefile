# Two commands: `make run` (set up, then start the newest chapter on 127.0.0.1:5678)
# and `make test` (set up, then lint, run the whole suite and build the docs strictly).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NEWEST := $(lastword $(sort $(notdir $(wildcard chapters/[0-9][0-9]_*))))

.PHONY: run test lint docs serve-docs clean

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
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

test: lint docs
	$(PY) -m pytest

serve-docs: $(STAMP)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .hypothesis
