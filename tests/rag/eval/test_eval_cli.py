"""`pagerag eval` end to end through the CLI: a small folder of PDFs and a scan, tiny models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from rag.cli import app
from tests.pdfs import make_pdf
from tests.rag.eval.test_datasets import write_beir

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two PDFs with a text layer, one scanned page (an image: no text), four questions."""
    root = tmp_path_factory.mktemp("library")
    make_pdf(root / "spice.pdf", ["Zanzibar clove harvest", "Quarterly revenue summary"])
    make_pdf(root / "city" / "tram.pdf", ["Helsinki tram timetable", "Budget overview"])
    scan = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(scan).rectangle((40, 40, 260, 120), fill="black")
    scan.save(root / "receipt.png")
    questions = [
        {"question": "When is the clove harvest in Zanzibar?", "source": "spice.pdf", "page": 1},
        {"question": "Helsinki tram timetable", "source": "city/tram.pdf", "page": 1},
        {"question": "budget overview", "source": "city/tram.pdf", "page": 2, "answer": "none"},
        {"question": "What does the scanned receipt show?", "source": "receipt.png", "page": 1},
    ]
    lines = [json.dumps(q) for q in questions]
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def env(tmp_path: Path, tiny_colqwen_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "user-data"
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(data))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tiny_colqwen_dir))
    monkeypatch.setenv("PAGERAG_DEVICE", "cpu")
    monkeypatch.setenv("PAGERAG_MAX_VISUAL_TOKENS", "32")
    monkeypatch.setenv("PAGERAG_RENDER_DPI", "40")
    yield data


def run_eval(*args: str) -> dict:
    code, stdout, stderr = invoke("eval", *args, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def test_text_mode_figures_are_exact(
    env: Path, library: Path, tiny_generator_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --reuse-index: one ingestion into PAGERAG_DATA_DIR serves the three runs below.
    report = run_eval(str(library), "--mode", "text", "-k", "5", "--reuse-index")
    assert (report["mode"], report["kind"], report["questions"], report["pages"]) == (
        "text",
        "questions",
        4,
        5,
    )
    assert (env / "index").is_dir()
    # BM25 puts the three text pages first; the scan has no text, so text search never finds it.
    ranks = [q["first_relevant_rank"] for q in report["per_query"]]
    assert ranks == [1, 1, 1, None]
    assert report["metrics"]["recall@1"] == pytest.approx(0.75)
    assert report["metrics"]["mrr@10"] == pytest.approx(0.75)
    assert report["metrics"]["ndcg@5"] == pytest.approx(0.75)
    assert report["per_query"][3]["relevant"] == ["receipt.png p.1"]
    assert report["latency"]["p95_ms"] >= report["latency"]["p50_ms"] > 0
    assert report["answers"] is None and report["warnings"] == []

    code, stdout, _ = invoke("eval", str(library), "--mode", "text", "-k", "3", "--reuse-index")
    assert code == 0
    assert "ndcg@5" in stdout and "latency p95" in stdout and "4 questions over 5 pages" in stdout

    monkeypatch.setenv("PAGERAG_GENERATOR_MODEL", str(tiny_generator_dir))
    monkeypatch.setenv("PAGERAG_GEN_MIN_PIXELS", str(4 * 28 * 28))
    monkeypatch.setenv("PAGERAG_GEN_MAX_PIXELS", str(16 * 28 * 28))
    monkeypatch.setenv("PAGERAG_MAX_NEW_TOKENS", "4")
    answered = run_eval(str(library), "--mode", "text", "--reuse-index", "--answers")
    assert answered["pages"] == 5 and answered["metrics"]["recall@1"] == pytest.approx(0.75)
    graded = answered["answers"]
    assert graded["questions"] == 1  # only one question has a gold answer
    [row] = graded["per_question"]
    assert row["gold"] == ["none"] and 0 <= row["anls"] <= 1 and row["generation_seconds"] > 0
    assert set(graded) >= {"exact_match", "anls", "contains", "generation_seconds_mean"}


def test_hybrid_mode_also_finds_the_scan(env: Path, library: Path) -> None:
    report = run_eval(str(library), "--mode", "hybrid")  # k=10 > 5 pages: every page returned
    assert report["mode"] == "hybrid" and report["k"] == 10 and report["pages"] == 5
    assert all(q["first_relevant_rank"] is not None for q in report["per_query"])
    assert report["metrics"]["recall@10"] == 1.0
    assert 0 < report["metrics"]["ndcg@10"] <= 1
    # A temporary index: nothing was written to the user's PAGERAG_DATA_DIR.
    assert not env.exists()


def test_bad_datasets_exit_2_with_the_reason(env: Path, library: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke("eval", str(tmp_path / "nowhere"))
    assert code == 2 and "no such file" in stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "source": "spice.pdf"}\n', encoding="utf-8")
    code, _, stderr = invoke("eval", str(library), "--questions", str(bad))
    assert code == 2 and "line 1" in stderr and '"page"' in stderr
    code, _, stderr = invoke("eval", str(library), "--mode", "fuzzy")
    assert code == 2


def test_vidore_beir_folder_in_text_mode(env: Path, tmp_path: Path) -> None:
    # Page images have no text layer: the OCR text the dataset ships is indexed instead.
    write_beir(tmp_path / "v3")
    report = run_eval(str(tmp_path / "v3"), "--mode", "text")
    assert (report["kind"], report["questions"], report["pages"]) == ("vidore-beir", 2, 3)
    assert [q["first_relevant_rank"] for q in report["per_query"]] == [1, 1]
    # Query 2 has two relevant pages (graded 2 and 1); only the first is found.
    assert report["metrics"]["recall@1"] == pytest.approx((1 + 0.5) / 2)
    assert report["metrics"]["mrr@10"] == 1.0
