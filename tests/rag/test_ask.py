"""Answering through the service object and `pagerag ask`, with the tiny random models."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rag.cli import EXIT_CONFIG, app
from rag.config import Settings
from rag.models.generator import Generator
from rag.models.loading import ModelLoadError
from rag.prompt import parse_citations
from rag.service import PageRAG, PageRAGError
from rag.types import Answer, SearchFilter
from tests.pdfs import make_pdf
from tests.scripted import ScriptedGenerator

runner = CliRunner()


def settings_for(data: Path, retriever: Path, generator: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data,
        "retriever_model": str(retriever),
        "generator_model": str(generator),
        "device": "cpu",
        "max_visual_tokens": 32,
        "render_dpi": 50,
        "gen_min_pixels": 4 * 28 * 28,
        "gen_max_pixels": 16 * 28 * 28,
        "max_new_tokens": 12,
    }
    return Settings(_env_file=None, **{**values, **extra})


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("library")
    make_pdf(folder / "report.pdf", ["Revenue 2015", "Costs 2015", "Total 2015", "Outlook"])
    make_pdf(folder / "other.pdf", ["Minutes", "Budget"])
    return folder


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, library: Path, tiny_colqwen_dir: Path, tiny_retriever
) -> Iterator[PageRAG]:
    """The library ingested once; its generator model path does not exist."""
    tmp = tmp_path_factory.mktemp("ask-service")
    settings = settings_for(tmp / "data", tiny_colqwen_dir, tmp / "no-generator")
    svc = PageRAG(settings, retriever=tiny_retriever)
    svc.ingest([library])
    yield svc
    svc.close()


@pytest.fixture
def service(indexed: PageRAG, tiny_generator: Generator) -> PageRAG:
    # A sampling copy of the session's generator, so the random model writes varied words;
    # tests replace it freely.
    generator = copy.copy(tiny_generator)
    generator.temperature, generator.min_new_tokens, generator.max_new_tokens = 1.0, 24, 24
    indexed.generator = generator
    return indexed


def test_ask_stream_yields_text_then_the_answer(service: PageRAG) -> None:
    torch.manual_seed(0)
    stream = service.ask_stream("What was the total in 2015?")
    chunks, answer = list(stream), stream.answer
    assert isinstance(answer, Answer) and all(isinstance(c, str) for c in chunks)
    assert len(chunks) >= 2 and "".join(chunks) == answer.text
    assert answer.question == "What was the total in 2015?"
    assert [c.label for c in answer.citations] == [1, 2, 3]  # PAGERAG_ASK_PAGES pages
    hits = service.search("What was the total in 2015?", 3)
    assert [(c.doc_id, c.page, c.image) for c in answer.citations] == [
        (h.doc_id, h.page, h.image) for h in hits
    ]
    assert all(Path(c.image).is_file() for c in answer.citations)
    cited = parse_citations(answer.text, 3)
    assert {c.label for c in answer.citations if c.cited} == cited
    assert answer.completion_tokens == 24 and answer.prompt_tokens > 0
    assert answer.retrieval_seconds > 0 and answer.generation_seconds > 0
    assert not service._model_lock.locked()


def test_ask_returns_the_same_answer_as_the_stream(service: PageRAG) -> None:
    service.generator.temperature = 0.0  # greedy: both runs write the same text
    streamed = service.ask_stream("Costs?", k=2).answer
    answer = service.ask("Costs?", k=2)
    assert isinstance(streamed, Answer)
    assert (answer.text, answer.citations) == (streamed.text, streamed.citations)
    assert len(answer.citations) == 2


def test_cited_labels_are_mapped_back_to_pages(service: PageRAG) -> None:
    service.generator = generator = ScriptedGenerator("The total is 12 [2]", " and [9] ", "[1, 3].")
    history = [("Which report?", "report.pdf [1].")]
    answer = service.ask("Total?", k=4, history=history)
    assert answer.text == "The total is 12 [2] and [9] [1, 3]."
    assert [c.cited for c in answer.citations] == [True, True, True, False]  # [9] is not a page
    [(question, pages, passed_history)] = generator.calls
    assert question == "Total?" and passed_history == tuple(history)
    assert [(p.doc_id, p.page) for p in pages] == [(c.doc_id, c.page) for c in answer.citations]
    assert (answer.prompt_tokens, answer.completion_tokens) == (100, 3)


def test_an_answer_without_labels_still_lists_its_pages(service: PageRAG) -> None:
    service.generator = ScriptedGenerator("The pages do not say.")
    answer = service.ask("Who won?", k=2)
    assert len(answer.citations) == 2 and not any(c.cited for c in answer.citations)


def test_a_filter_is_applied_to_the_pages_shown(service: PageRAG) -> None:
    service.generator = ScriptedGenerator("ok")
    [doc] = [d for d in service.documents() if d.source == "other.pdf"]
    answer = service.ask("Budget?", k=5, filters=SearchFilter(doc_ids=(doc.doc_id,)))
    assert {c.source for c in answer.citations} == {"other.pdf"} and len(answer.citations) == 2


def test_generation_holds_the_model_lock(service: PageRAG) -> None:
    service.generator = ScriptedGenerator("a ", "b ", "c")
    stream = service.ask_stream("q")
    assert next(stream) == "a "
    assert service._model_lock.locked()  # mid-answer: no other model call can start
    stream.close()  # a reader that goes away frees the device
    assert not service._model_lock.locked()


def test_two_questions_never_generate_at_once(service: PageRAG) -> None:
    service.generator = generator = ScriptedGenerator("a ", "b ", "c", delay=0.05)
    threads = [threading.Thread(target=service.ask, args=(f"q{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert generator.log == ["start", "end", "start", "end"]


def test_bad_questions_are_refused(service: PageRAG) -> None:
    with pytest.raises(PageRAGError, match="empty"):
        service.ask("   ")
    with pytest.raises(PageRAGError, match="at least 1"):
        service.ask("q", k=0)


def test_no_pages_answers_without_any_model(tmp_path: Path) -> None:
    # Neither model exists: loading either would raise, so the answer proves neither loaded.
    missing = tmp_path / "missing"
    svc = PageRAG(settings_for(tmp_path / "data", missing, missing))
    try:
        answer = svc.ask("What was the total?")
        assert "Nothing is indexed" in answer.text and answer.citations == []
        stream = svc.ask_stream("What was the total?")
        chunks, streamed = list(stream), stream.answer
        assert chunks == [] and streamed == answer
        assert svc._generator is None and svc._retriever is None
    finally:
        svc.close()


def test_a_filter_that_leaves_no_page_answers_without_the_generator(
    service: PageRAG, tmp_path: Path
) -> None:
    service.generator = None  # load it on the next question: its model path does not exist
    answer = service.ask("q", filters=SearchFilter(tags=("no-such-tag",)))
    assert "No indexed page matches the filter" in answer.text and answer.citations == []
    assert service._generator is None
    with pytest.raises(ModelLoadError, match="PAGERAG_GENERATOR_MODEL"):
        service.ask("q")


# -- CLI ------------------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def cli_env(
    tmp_path_factory: pytest.TempPathFactory,
    library: Path,
    tiny_colqwen_dir: Path,
    tiny_generator_dir: Path,
) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("ask-data")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "DATA_DIR": data,
            "RETRIEVER_MODEL": tiny_colqwen_dir,
            "GENERATOR_MODEL": tiny_generator_dir,
            "DEVICE": "cpu",
            "MAX_VISUAL_TOKENS": 32,
            "RENDER_DPI": 50,
            "GEN_MIN_PIXELS": 4 * 28 * 28,
            "GEN_MAX_PIXELS": 16 * 28 * 28,
            "MAX_NEW_TOKENS": 8,
        }.items():
            mp.setenv(f"PAGERAG_{name}", str(value))
        code, _, _ = invoke("ingest", str(library), "--json")
        assert code == 0
        yield data


def test_cli_ask_json_is_the_whole_answer(cli_env: Path) -> None:
    code, stdout, _ = invoke("ask", "What was the total in 2015?", "--json")
    answer = json.loads(stdout)
    assert code == 0
    assert set(answer) == {
        "question",
        "text",
        "citations",
        "retrieval_seconds",
        "generation_seconds",
        "prompt_tokens",
        "completion_tokens",
    }
    assert [c["label"] for c in answer["citations"]] == [1, 2, 3]
    assert set(answer["citations"][0]) == {
        "doc_id",
        "source",
        "page",
        "score",
        "image",
        "label",
        "cited",
        "boxes",
        "regions",
    }
    assert 0 < answer["completion_tokens"] <= 8


def test_cli_ask_streams_then_lists_the_sources(cli_env: Path) -> None:
    _, stdout, _ = invoke("ask", "Costs?", "-k", "2", "--json")
    expected = json.loads(stdout)  # greedy: the same text every time
    for extra in ([], ["--no-stream"]):
        code, stdout, stderr = invoke("ask", "Costs?", "-k", "2", *extra)
        assert code == 0
        assert stdout.startswith(expected["text"] + "\n")
        sources = stdout[len(expected["text"]) :]
        assert "sources" in sources and ("report.pdf" in sources or "other.pdf" in sources)
        assert "prompt tokens" in stderr


def test_cli_ask_filters_by_document(cli_env: Path) -> None:
    docs = json.loads(invoke("docs", "list", "--json")[1])
    [other] = [d for d in docs if d["source"] == "other.pdf"]
    code, stdout, _ = invoke("ask", "Budget?", "--doc", other["doc_id"][:10], "-k", "5", "--json")
    citations = json.loads(stdout)["citations"]
    assert code == 0 and len(citations) == 2
    assert {c["doc_id"] for c in citations} == {other["doc_id"]}


def test_cli_ask_with_nothing_indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PAGERAG_GENERATOR_MODEL", str(tmp_path / "no-model"))
    code, stdout, _ = invoke("ask", "anything")
    assert code == 0 and "Nothing is indexed" in stdout


def test_cli_ask_missing_generator_names_the_setting(
    cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERAG_GENERATOR_MODEL", str(tmp_path / "no-model"))
    code, _, stderr = invoke("ask", "anything")
    assert code == EXIT_CONFIG and "PAGERAG_GENERATOR_MODEL" in stderr
    code, _, stderr = invoke("ask", "   ")
    assert code == 2 and "empty" in stderr  # bad usage
