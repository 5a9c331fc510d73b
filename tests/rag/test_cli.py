"""The whole path through the CLI on the shared corpus of real PDFs, with the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import EXIT_CONFIG, EXIT_FAILED_FILES, app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_colqwen_dir: Path) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGERAG_DATA_DIR", str(data))
        mp.setenv("PAGERAG_RETRIEVER_MODEL", str(tiny_colqwen_dir))
        mp.setenv("PAGERAG_DEVICE", "cpu")
        mp.setenv("PAGERAG_MAX_VISUAL_TOKENS", "64")
        mp.setenv("PAGERAG_RENDER_DPI", "50")
        mp.setenv("PAGERAG_BATCH_SIZE", "8")
        yield data


@pytest.fixture(scope="module")
def first_run(env: Path, corpus: Path) -> dict:
    code, stdout, _ = invoke("ingest", str(corpus), "--json")
    assert code == EXIT_FAILED_FILES  # two files in the corpus cannot be read
    return json.loads(stdout)


def test_ingest_corpus(first_run: dict) -> None:
    assert first_run["indexed_documents"] == 49
    assert first_run["indexed_pages"] == 242
    assert first_run["skipped_documents"] == 1  # mcid_example.pdf == figure_structure.pdf
    failed = {f["source"]: f["error"] for f in first_run["failed"]}
    assert set(failed) == {"empty.pdf", "password-example.pdf"}
    assert "empty" in failed["empty.pdf"] and "encrypted" in failed["password-example.pdf"]


def test_docs_and_info_agree(first_run: dict) -> None:
    code, stdout, _ = invoke("docs", "list", "--json")
    docs = json.loads(stdout)
    assert code == 0 and len(docs) == 49 and sum(d["pages"] for d in docs) == 242
    [dup] = [d for d in docs if len(d["sources"]) == 2]
    assert sorted(dup["sources"]) == ["figure_structure.pdf", "mcid_example.pdf"]
    info = json.loads(invoke("info", "--json")[1])
    assert (info["documents"], info["pages"], info["backend"]) == (49, 242, "qdrant-edge")
    assert info["bytes_on_disk"] > 0 and info["pending_documents"] == 0


def test_second_run_skips_everything(first_run: dict, corpus: Path) -> None:
    code, stdout, _ = invoke("ingest", str(corpus), "--json")
    again = json.loads(stdout)
    assert code == EXIT_FAILED_FILES
    assert (again["indexed_documents"], again["indexed_pages"]) == (0, 0)
    assert again["skipped_documents"] == 50
    assert json.loads(invoke("info", "--json")[1])["pages"] == 242


def test_search_returns_ranked_pages_with_images(first_run: dict) -> None:
    code, stdout, _ = invoke(
        "search", "total handgun permits in November 2015", "-k", "4", "--json"
    )
    hits = json.loads(stdout)
    assert code == 0 and len(hits) == 4
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert set(hit) == {"doc_id", "source", "page", "score", "image"}
        assert Path(hit["image"]).is_file()
    # Filter by document: every hit comes from it.
    doc = hits[0]["doc_id"]
    code, stdout, _ = invoke("search", "total", "--doc", doc[:10], "-k", "50", "--json")
    only = json.loads(stdout)
    assert only and {h["doc_id"] for h in only} == {doc}
    code, stdout, _ = invoke(
        "search", "total", "--source", "nics-background-checks-2015-11.pdf", "--json"
    )
    assert {h["source"] for h in json.loads(stdout)} == {"nics-background-checks-2015-11.pdf"}


def test_delete_removes_document_completely(first_run: dict) -> None:
    docs = json.loads(invoke("docs", "list", "--json")[1])
    victim = next(d for d in docs if d["source"] == "WARN-Report-for-7-1-2015-to-03-25-2016.pdf")
    hits = json.loads(
        invoke("search", "layoffs", "--doc", victim["doc_id"], "-k", "3", "--json")[1]
    )
    image_dir = Path(hits[0]["image"]).parent
    code, stdout, _ = invoke("docs", "delete", victim["doc_id"][:12])
    assert code == 0 and "deleted" in stdout
    assert not image_dir.exists()
    info = json.loads(invoke("info", "--json")[1])
    assert (info["documents"], info["pages"]) == (48, 242 - victim["pages"])
    code, _, stderr = invoke("search", "layoffs", "--doc", victim["doc_id"], "--json")
    assert code == EXIT_CONFIG and "no document" in stderr


def test_bad_input_exits_non_zero_with_a_reason(env: Path) -> None:
    code, stdout, _ = invoke("ingest", str(env / "does-not-exist"), "--json")
    assert code == EXIT_FAILED_FILES
    assert json.loads(stdout)["failed"][0]["error"] == "no such file or folder"
    code, _, stderr = invoke("docs", "delete", "ffff")
    assert code == EXIT_CONFIG and "no document" in stderr
    code, _, stderr = invoke("docs", "delete", "zzzz")  # not hex: bad usage
    assert code == 2 and "not a document id" in stderr
    code, _, stderr = invoke("search", "   ")
    assert code == EXIT_CONFIG and "empty" in stderr


def test_model_mismatch_stops_with_reindex_hint(
    first_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", "vidore/colqwen2-v1.1")
    code, _, stderr = invoke("search", "anything")
    assert code == EXIT_CONFIG
    assert "re-index" in stderr and "vidore/colqwen2-v1.1" in stderr


def test_missing_model_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tmp_path / "no-such-model"))
    code, _, stderr = invoke("search", "anything")
    assert code == EXIT_CONFIG and "PAGERAG_RETRIEVER_MODEL" in stderr


def test_bad_settings_and_unreachable_server_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PAGERAG_RENDERER", "ghostscript")
    code, _, stderr = invoke("docs", "list")
    assert code == EXIT_CONFIG
    allowed = "use one of pypdfium2, pdf2image"
    assert stderr == f"error: PAGERAG_RENDERER='ghostscript' is not allowed; {allowed}\n"
    monkeypatch.delenv("PAGERAG_RENDERER")
    monkeypatch.setenv("PAGERAG_QDRANT_URL", "http://127.0.0.1:9")  # discard port: refused
    code, _, stderr = invoke("info")
    assert code == EXIT_CONFIG and "PAGERAG_QDRANT_URL" in stderr


def test_locked_index_is_reported(env: Path, first_run: dict) -> None:
    from rag.config import Settings
    from rag.index import open_index

    holder = open_index(Settings(_env_file=None))  # a running server would hold it like this
    try:
        code, _, stderr = invoke("docs", "list")
        assert code == EXIT_CONFIG and "another PageRAG process" in stderr
    finally:
        holder.close()
