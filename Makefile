# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_MKDOCS_2_WARNING := 1

.PHONY: serve site test install validate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

validate: $(STAMP)
	$(BIN)/moekb validate

# Build and serve on http://127.0.0.1:8000; YAML edits under papers/ rebuild the site on reload.
serve: $(STAMP)
	$(BIN)/moekb build
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Static site in site/ (strict: any broken link or anchor fails the build).
site: $(STAMP)
	$(BIN)/mkdocs build --strict

# Every test: unit, validation fixtures, site build, notebooks (nbval), browser (Playwright).
test: $(STAMP)
	$(BIN)/moekb validate
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest -q -p no:python --nbval-lax --nbval-current-env notebooks
	$(BIN)/mkdocs build --strict --site-dir build/site-check

clean:
	rm -rf site build docs/generated
