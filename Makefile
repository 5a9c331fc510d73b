# PageRAG: `make test` sets up .venv and runs the offline test suite.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test lint format clean system-deps ingest

setup: $(STAMP)

# uv installs exactly what uv.lock pins (torch and torchvision from PyPI: the same wheels
# run on CPU-only machines and on CUDA GPUs).
$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

# Optional: poppler for PAGERAG_RENDERER=pdf2image (the default renderer needs nothing).
system-deps:
	@command -v pdftoppm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq poppler-utils >/dev/null) \
	      || echo "note: poppler-utils not installed; pdf2image tests will be skipped"; \
	  else echo "note: install poppler-utils to use PAGERAG_RENDERER=pdf2image"; fi; }

test: setup system-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The main job for now: ingest a folder (`make ingest DOCS=~/reports`).
ingest: setup
	@test -n "$(DOCS)" || { echo "usage: make ingest DOCS=path/to/pdfs"; exit 2; }
	$(VENV)/bin/pagerag ingest "$(DOCS)"
