"""Everyday commands start fast (issue 11, item 3): `--help`, `info`, `docs list` and text search
import none of the heavy libraries. Each command runs in a fresh interpreter that writes its
`sys.modules` at exit; the index holds a real ingested PDF, so the search finds a page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ingesting import ingest_service
from tests.pdfs import make_pdf

# Seconds each to import (torch alone ~3 s on a 2-core box); needed only by the models, the web
# UI and a Qdrant server. The embedded engine (qdrant_edge) and numpy are cheap and allowed.
HEAVY = ("torch", "transformers", "colpali_engine", "gradio", "qdrant_client")
RUN_CLI = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["pagerag", *sys.argv[1:]]
from rag.cli import app
app()
"""


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, tiny_colqwen_dir: Path, tiny_retriever: Any
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("imports")
    pdf = make_pdf(root / "docs" / "harvest.pdf", ["Zanzibar clove harvest notice"])
    settings = {"max_visual_tokens": 32, "render_dpi": 50}
    service = ingest_service(root / "data", tiny_colqwen_dir, tiny_retriever, **settings)
    try:
        assert service.ingest([pdf]).indexed_pages == 1
    finally:
        service.close()
    return {
        **os.environ,
        "PAGERAG_DATA_DIR": str(root / "data"),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "PAGERAG_RENDER_DPI": "50",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["info", "--json"],
        ["docs", "list", "--json"],
        ["search", "Zanzibar clove", "--mode", "text", "--json"],
    ],
    ids=" ".join,
)
def test_command_imports_no_heavy_library(
    command: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    modules_out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *command],
        env={**env, "MODULES_OUT": str(modules_out)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = {name.partition(".")[0] for name in json.loads(modules_out.read_text())}
    assert "rag" in loaded
    assert sorted(loaded & set(HEAVY)) == []
    if command[0] == "search":
        [hit] = json.loads(result.stdout)
        assert hit["source"] == "harvest.pdf" and hit["page"] == 1
    if command[0] == "info":
        info = json.loads(result.stdout)
        assert (info["documents"], info["pages"]) == (1, 1)
        assert (info["device"], info["dtype"]) == ("auto", "auto")  # configured, not probed
