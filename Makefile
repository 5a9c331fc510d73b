# PageRAG: `make test` sets up .venv and runs the offline test suite.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup test lint check format clean system-deps browser-deps ingest serve bench load

setup: $(STAMP)

# uv installs exactly what uv.lock pins (torch and torchvision from PyPI: the same wheels
# run on CPU-only machines and on CUDA GPUs).
$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

# Optional: poppler for PAGERAG_RENDERER=pdf2image and Tesseract for PAGERAG_OCR_ENGINE=tesseract
# (the default renderer and OCR engine need nothing outside the lock file).
system-deps:
	@command -v pdftoppm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq poppler-utils >/dev/null) \
	      || echo "note: poppler-utils not installed; pdf2image tests will be skipped"; \
	  else echo "note: install poppler-utils to use PAGERAG_RENDERER=pdf2image"; fi; }
	@command -v tesseract >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-fra \
	       tesseract-ocr-chi-sim >/dev/null) \
	      || echo "note: tesseract not installed; its OCR test will be skipped"; \
	  else echo "note: install tesseract-ocr to use PAGERAG_OCR_ENGINE=tesseract"; fi; }

# The browser test drives Debian's chromium (Playwright cannot download its own browser here);
# without one it is skipped, with a message saying so.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: chromium not installed; the browser test will be skipped"; \
	  else echo "note: install chromium (or set PAGERAG_CHROMIUM) to run the browser test"; fi; }

test: setup system-deps browser-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Lint, format and types (mypy; settings in pyproject.toml).
check: lint
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The web UI and the REST API on http://$(HOST):$(PORT), ingesting DOCS (incrementally) in the
# background: `make serve DOCS=~/reports`.
HOST ?= 127.0.0.1
PORT ?= 7860
serve: setup
	$(VENV)/bin/pagerag serve --host "$(HOST)" --port "$(PORT)" $(if $(DOCS),--docs "$(DOCS)")

# Ingest a folder without serving it (`make ingest DOCS=~/reports`).
ingest: setup
	@test -n "$(DOCS)" || { echo "usage: make ingest DOCS=path/to/pdfs"; exit 2; }
	$(VENV)/bin/pagerag ingest "$(DOCS)"

# Retrieval and ingestion benchmarks (docs/BENCHMARKS.md has the figures and the 100k command).
# Synthetic pages go to $$PAGERAG_BENCH_DIR (default /tmp/pagerag-bench) and are deleted after.
bench: setup system-deps
	$(VENV)/bin/python bench/retrieval.py --pages 1000
	$(VENV)/bin/python bench/retrieval.py --pages 10000
	$(VENV)/bin/python bench/ingest.py

# The server under load (docs/RELIABILITY.md): 50 clients asking through the REST API for 60 s
# against `pagerag serve` on the tiny test models, one model worker, on 127.0.0.1. Exits 1 if
# any property fails (a 5xx, a 429 without Retry-After, a late answer, memory not back).
# The test suite runs a 20-client, 8-second version (tests/rag/test_load.py).
load: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/python bench/load.py --clients 50 --seconds 60
