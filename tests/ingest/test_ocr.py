"""OCR for pages without a text layer: real scans (an image-only PDF made from a rendered page,
and the corpus's scanned pages), read by the real engines in the render worker, found by words
that exist only in their pixels."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image

from ingest.ocr import OcrOptions, RapidOcr, Tesseract, _lines, looks_blank, needs_ocr
from ingest.sandbox import RenderSandbox
from rag.config import Settings
from rag.service import PageRAG
from tests.pdfs import make_pdf

WORD = "Zanzibar"  # on the scan only as pixels


def scan_of(pdf: Path, out: Path, dpi: int = 150) -> Path:
    """An image-only PDF of `pdf`'s first page: what a scanner makes (no text layer)."""
    document = pdfium.PdfDocument(pdf)
    image = document[0].render(scale=dpi / 72).to_pil().convert("L")
    document.close()
    image.save(out, "PDF", resolution=dpi)
    return out


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    text = make_pdf(folder / "typed.tmp", [f"Invoice {WORD} 4711"])
    scan_of(text, folder / "scan.pdf")
    text.unlink()
    make_pdf(folder / "typed.pdf", ["Minutes of the board"])  # has a text layer: no OCR
    return folder


def settings_for(data: Path, retriever: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data,
        "retriever_model": str(retriever),
        "device": "cpu",
        "max_visual_tokens": 32,
        "render_dpi": 144,
        "ocr_engine": "rapidocr",  # tests/conftest.py turns it off for the other tests
    }
    return Settings(_env_file=None, **{**values, **extra})


def test_a_short_text_layer_needs_ocr_and_a_blank_page_does_not() -> None:
    assert needs_ocr("", 20) and needs_ocr(" 12 \n 3 ", 20) and not needs_ocr("x" * 20, 20)
    assert looks_blank(Image.new("L", (1200, 1600), 255))
    assert looks_blank(Image.new("RGB", (1200, 1600), (250, 248, 240)))  # yellowed paper
    page = Image.new("L", (1200, 1600), 255)
    page.paste(0, (100, 1500, 300, 1512))  # one short line of small print at the bottom
    assert not looks_blank(page)


def test_boxes_are_read_in_rows_top_to_bottom_left_to_right() -> None:
    def box(x: int, y: int) -> list[list[int]]:
        return [[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]]

    found = [(box(200, 103), "world"), (box(10, 100), "hello"), (box(10, 140), "next")]
    assert _lines(found) == "hello world\nnext"


def test_the_scan_is_found_by_a_word_only_in_its_pixels(
    scans: Path, tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever: Any
) -> None:
    service = PageRAG(settings_for(tmp_path, tiny_colqwen_dir), retriever=tiny_retriever)
    try:
        report = service.ingest([scans])
        assert report.indexed_documents == 2 and not report.failed
        for mode in ("text", "hybrid"):
            hits = service.search(WORD.lower(), 2, mode=mode)
            assert hits[0].source == "scan.pdf", mode
        [scan] = service.search(WORD, 1, mode="text")
        assert scan.text_origin == "ocr" and WORD in scan.text and "4711" in scan.text
        [typed] = service.search("board", 1, mode="text")
        assert typed.source == "typed.pdf" and typed.text_origin == "pdf"
    finally:
        service.close()


def test_ocr_fills_in_a_library_ingested_without_it(
    scans: Path, tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever: Any
) -> None:
    off = PageRAG(
        settings_for(tmp_path, tiny_colqwen_dir, ocr_engine="off"), retriever=tiny_retriever
    )
    try:
        off.ingest([scans])
        assert not off.search(WORD, 2, mode="text")  # no text layer, no OCR: not findable
    finally:
        off.close()
    service = PageRAG(settings_for(tmp_path, tiny_colqwen_dir), retriever=tiny_retriever)
    try:
        seen: list[tuple[int, int]] = []
        report = service.fill_ocr(lambda done, total: seen.append((done, total)))
        assert (report.checked, report.read, report.failed) == (2, 1, [])
        assert seen[-1] == (2, 2)
        [hit] = service.search(WORD, 1, mode="text")
        assert hit.source == "scan.pdf" and hit.text_origin == "ocr"
        assert service.fill_ocr().read == 0  # done once: nothing left to read
    finally:
        service.close()


@pytest.mark.slow  # ~10-30 s of CPU for one dense page
def test_a_corpus_scan_is_read(corpus: Path) -> None:
    """`issue-203-decimalize.pdf`: pages 2 and 3 are scans (Chinese) without a text layer."""
    pdf = pdfium.PdfDocument(corpus / "issue-203-decimalize.pdf")
    image = pdf[1].render(scale=144 / 72).to_pil()
    pdf.close()
    text = RapidOcr().read(image, 120)
    assert needs_ocr(pdf_text(corpus / "issue-203-decimalize.pdf", 1), 20)
    assert len("".join(text.split())) > 300 and "南京海关" in text  # the customs office


def pdf_text(path: Path, index: int) -> str:
    pdf = pdfium.PdfDocument(path)
    try:
        textpage = pdf[index].get_textpage()
        return str(textpage.get_text_bounded())
    finally:
        pdf.close()


def test_ocr_runs_in_the_limited_worker_and_reports_a_missing_image(tmp_path: Path) -> None:
    make_pdf(tmp_path / "typed.pdf", [f"Receipt {WORD}"])
    scan = scan_of(tmp_path / "typed.pdf", tmp_path / "scan.pdf")
    sandbox = RenderSandbox(ocr=OcrOptions("rapidocr", 20, 60), memory_mb=4096)
    try:
        [page] = list(sandbox.render(scan, "pdf", tmp_path / "out"))
        assert page.text_origin == "ocr" and WORD in page.text  # type: ignore[union-attr]
        assert WORD in sandbox.read_image(page.image)  # type: ignore[union-attr]
        from ingest.render import RenderError

        with pytest.raises(RenderError):
            sandbox.read_image(tmp_path / "nothing.png")
    finally:
        sandbox.close()


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_tesseract_reads_the_scan_too(tmp_path: Path) -> None:
    make_pdf(tmp_path / "typed.pdf", [f"Invoice {WORD} 4711"])
    pdf = pdfium.PdfDocument(tmp_path / "typed.pdf")
    image: Image.Image = pdf[0].render(scale=2).to_pil()
    pdf.close()
    assert WORD in Tesseract().read(image, 60)


def test_pagerag_ocr_reads_the_scans_of_an_existing_library(
    scans: Path, tmp_path: Path, tiny_colqwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from rag.cli import app

    for name, value in {
        "PAGERAG_DATA_DIR": str(tmp_path / "data"),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "PAGERAG_OCR_ENGINE": "off",
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(scans)]).exit_code == 0
    refused = runner.invoke(app, ["ocr"])
    assert refused.exit_code == 3 and "PAGERAG_OCR_ENGINE=off" in refused.output
    monkeypatch.setenv("PAGERAG_OCR_ENGINE", "rapidocr")
    done = runner.invoke(app, ["ocr", "--json"])
    assert done.exit_code == 0, done.output
    assert '"read": 1' in done.output and '"checked": 2' in done.output
    found = runner.invoke(app, ["search", WORD, "--mode", "text", "--json"])
    assert found.exit_code == 0 and "scan.pdf" in found.output


def test_auto_uses_tesseract_where_installed_else_rapidocr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.ocr import engine

    if shutil.which("tesseract"):
        assert isinstance(engine("auto"), Tesseract)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert isinstance(engine("auto"), RapidOcr)
    from ingest.ocr import OcrUnavailable

    with pytest.raises(OcrUnavailable, match="install tesseract-ocr"):
        engine("tesseract")
