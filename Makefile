# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt
export NO_MKDOCS_2_WARNING := 1

.PHONY: serve site test check install install-core validate gpu-check benchmarks clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

validate: $(STAMP)
	$(BIN)/moekb validate

# Generate, then build and serve on http://127.0.0.1:8000; YAML edits under papers/ rebuild the site.
serve: $(STAMP)
	$(BIN)/moekb build
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Static site in site/ (strict: any broken link or anchor fails the build).
site: $(STAMP)
	$(BIN)/moekb build
	$(BIN)/mkdocs build --strict

# For contributors, under a minute: the entries, the knowledge-base tests and a strict build.
check: $(STAMP)
	$(BIN)/moekb validate
	$(BIN)/python -m pytest tests/kb -q -m "not site"
	$(BIN)/moekb build
	$(BIN)/mkdocs build --strict -q --site-dir build/site-check

# Every test: lint, unit, validation, site builds with both engines, notebooks (nbval), browser (Playwright).
test: $(STAMP)
	$(BIN)/ruff check moekb reference_impls tests benchmarks examples
	$(BIN)/moekb validate
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest -q -p no:python --nbval-lax --nbval-current-env notebooks
	$(BIN)/moekb build
	$(BIN)/mkdocs build --strict -q --site-dir build/site-check
	$(BIN)/zensical build --strict -f mkdocs.yml

# On a machine with a CUDA GPU: the CUDA tests (bf16 where the kernels need it) and the dispatch benchmark.
gpu-check: $(STAMP)
	$(BIN)/python -m pytest tests/impls -q -m gpu -p no:randomly
	$(BIN)/python benchmarks/moe_dispatch.py --device cuda --quick

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/moe_dispatch.py
	$(BIN)/python benchmarks/site_build.py --sites /dev/shm

clean:
	rm -rf site build .cache/moekb-build.json $(foreach d,papers surveys taxonomy gaps graph charts downloads notebooks code snippets recent start,docs/$(d))
