# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The development set-up pins torch; the package itself accepts torch>=2.1.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test docs install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	@# tasks: the demo's and the training tasks' data and plots; docs: the site test_docs.py builds
	$(PY) -m pip install --quiet -e ".[tasks,test,docs]"
	@# The native runtime (C++, built once and cached); without a compiler the Python loop runs.
	$(PY) -m torchcells.engine.native
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m torchcells demo

# One pytest-xdist worker per CPU this process may use (nproc: its affinity; at most 8), each with its
# share of the CPUs as torch's threads (tests/conftest.py). One process: make test PYTEST_WORKERS=0
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 8 ] && n=8; echo $$n)
test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

# The documentation site (MkDocs + Material + mkdocstrings) into site/; warnings are errors.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
