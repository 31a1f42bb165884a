# labkit: `make book` builds the book, `make test` runs every test, `make student` writes the student
# notebooks. All create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Datasets: the shared copy beside the repository (absolute, since the notebooks run in notebooks/).
# Set LABKIT_DATA yourself to use another folder. (Without it, outside make, labkit reads from and
# downloads into ~/.cache/labkit.)
export LABKIT_DATA ?= $(abspath ../shared/datasets)

.PHONY: book test test-fast student clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

book: $(STAMP)  ## build the Jupyter Book into _build/html (notebooks keep their committed outputs)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html in a browser."

test: $(STAMP)  ## unit tests (browser tests need `make book` first), then the notebooks under nbval, quick mode
	LABKIT_QUICK=1 $(PY) -m pytest -q tests
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		LABKIT_QUICK=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks; fi

test-fast: $(STAMP)  ## unit tests only
	LABKIT_QUICK=1 $(PY) -m pytest -q tests

student: $(STAMP)  ## student notebooks in _build/student: solutions replaced by stubs (FORCE=1: overwrite)
	$(PY) -m labkit.student _build/student $(if $(FORCE),--force)

clean:
	rm -rf _build .pytest_cache
