"""Search modes through the service and the CLI; text mode works without the retriever model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rag.cli import EXIT_CONFIG, app
from rag.config import Settings
from rag.index.base import IndexMismatchError
from rag.models.loading import ModelLoadError
from rag.service import PageRAG, PageRAGError
from rag.types import PageEmbedding, PageRecord, SearchFilter
from tests.scripted import ScriptedGenerator

runner = CliRunner()
TEXTS = ["Zanzibar clove harvest notice", "Quarterly revenue table", ""]  # page 3: a scan


def pages(doc_id: str, source: str) -> tuple[list[PageRecord], list[PageEmbedding]]:
    rng = np.random.default_rng(int(doc_id[0], 16))
    records, embeddings = [], []
    for n, text in enumerate(TEXTS, 1):
        rows = rng.normal(size=(20, 128)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        embeddings.append(PageEmbedding(rows, (4, 4), 2))
        records.append(
            PageRecord(doc_id, n, len(TEXTS), source, "", f"/img/{n}.png", 10, 10, (4, 4), 2, text)
        )
    return records, embeddings


def settings_for(data: Path) -> Settings:
    # The retriever model path does not exist: loading it would raise ModelLoadError.
    missing = data.parent / "no-model"
    return Settings(_env_file=None, data_dir=data, retriever_model=str(missing), device="cpu")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An index with two documents, built without any model (vectors made up here)."""
    svc = PageRAG(settings_for(tmp_path / "data"))
    for doc_id, source in (("a" * 64, "a.pdf"), ("b" * 64, "b/b.pdf")):
        svc.index.upsert(*pages(doc_id, source))
    svc.close()
    return tmp_path / "data"


@pytest.fixture
def service(data_dir: Path) -> Iterator[PageRAG]:
    svc = PageRAG(settings_for(data_dir))
    yield svc
    svc.close()


def test_text_mode_never_loads_the_retriever(service: PageRAG) -> None:
    hits = service.search("When was the clove harvest?", 5, mode="text")
    assert [(h.source, h.page) for h in hits][:2] in (
        [("a.pdf", 1), ("b/b.pdf", 1)],
        [("b/b.pdf", 1), ("a.pdf", 1)],
    )
    assert all(h.page != 3 for h in hits)  # the scan has no text
    only_b = service.search("clove", 5, SearchFilter(source_prefix="b"), mode="text")
    assert [(h.source, h.page) for h in only_b] == [("b/b.pdf", 1)]
    assert service._retriever is None and service.info().retriever_loaded is False
    for mode in ("visual", "hybrid"):
        with pytest.raises(ModelLoadError, match="PAGERAG_RETRIEVER_MODEL"):
            service.search("clove", 5, mode=mode)  # type: ignore[arg-type]


def test_default_mode_comes_from_the_settings(service: PageRAG) -> None:
    assert service.settings.search_mode == "hybrid"  # the default
    service.settings = service.settings.model_copy(update={"search_mode": "text"})
    assert service.search("revenue", 2)[0].text == "Quarterly revenue table"
    with pytest.raises(PageRAGError, match="unknown search mode 'fuzzy'"):
        service.search("revenue", 2, mode="fuzzy")  # type: ignore[arg-type]


def test_ask_in_text_mode_needs_no_retriever(service: PageRAG) -> None:
    service.generator = generator = ScriptedGenerator("From the first page [1].")
    answer = service.ask("clove harvest", k=2, mode="text")
    assert [(c.source, c.page) for c in answer.citations] == [
        (h.source, h.page) for h in generator.calls[0][1]
    ]
    assert {c.page for c in answer.citations} == {1} and answer.citations[0].cited
    assert service._retriever is None


def test_cli_mode_option(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tmp_path / "no-model"))  # as built
    monkeypatch.setenv("PAGERAG_DEVICE", "cpu")
    # No ColQwen2 weights at all, yet text search answers.
    result = runner.invoke(app, ["search", "revenue table", "--mode", "text", "--json"])
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)
    assert {(h["source"], h["page"]) for h in hits} == {("a.pdf", 2), ("b/b.pdf", 2)}
    monkeypatch.setenv("PAGERAG_SEARCH_MODE", "text")  # the setting gives the default
    assert runner.invoke(app, ["search", "revenue", "--json"]).exit_code == 0
    result = runner.invoke(app, ["search", "revenue", "--mode", "visual"])
    assert result.exit_code == EXIT_CONFIG and "PAGERAG_RETRIEVER_MODEL" in result.stderr
    # ask --mode text retrieves without the retriever and stops at the missing generator.
    monkeypatch.setenv("PAGERAG_GENERATOR_MODEL", str(tmp_path / "no-generator"))
    result = runner.invoke(app, ["ask", "clove harvest", "--mode", "text", "--json"])
    assert result.exit_code == EXIT_CONFIG and "PAGERAG_GENERATOR_MODEL" in result.stderr
    result = runner.invoke(app, ["search", "revenue", "--mode", "sideways"])
    assert result.exit_code == 2


def test_an_index_without_text_vectors_must_be_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An Edge shard as PageRAG schema 1 made it: visual vectors only.
    from qdrant_edge import EdgeConfig, EdgeShard

    from rag.index.edge import edge_config

    shard = tmp_path / "data" / "index" / "shard"
    EdgeShard.create(str(shard), EdgeConfig(vectors=edge_config().vectors)).close()
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    with pytest.raises(IndexMismatchError, match=r"[Rr]e-index"):
        PageRAG(settings)
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["search", "anything", "--mode", "text"])
    assert result.exit_code == EXIT_CONFIG and "pagerag reset" in result.stderr
