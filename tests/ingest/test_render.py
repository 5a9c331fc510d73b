import shutil
from pathlib import Path

import pytest
from PIL import Image

from ingest.render import RenderError, inspect, iter_pages


def test_renders_pages_with_text_layer(corpus: Path) -> None:
    path = corpus / "nics-background-checks-2015-11.pdf"
    doc = inspect(path, "pdf")
    assert doc.pages == 1
    [page] = list(iter_pages(path, "pdf", dpi=72))
    assert page.number == 1
    assert page.image.mode == "RGB"
    assert page.image.size == (1008, 612)  # landscape page at 72 dpi
    assert "Handgun" in page.text


def test_rotated_page_is_rendered_upright(corpus: Path) -> None:
    [page] = list(iter_pages(corpus / "nics-background-checks-2015-11-rotated.pdf", "pdf", dpi=72))
    assert page.image.size == (612, 1008)  # /Rotate 90 is applied by PDFium


def test_skip_and_dpi(corpus: Path) -> None:
    path = corpus / "issue-203-decimalize.pdf"
    pages = list(iter_pages(path, "pdf", dpi=36, skip={1, 3}))
    assert [p.number for p in pages] == [2]
    small = pages[0].image
    [big] = [p for p in iter_pages(path, "pdf", dpi=72) if p.number == 2]
    assert abs(big.image.width - 2 * small.width) <= 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.pdf", "damaged or not a PDF"), ("password-example.pdf", "encrypted")],
)
def test_unreadable_pdfs_say_why(corpus: Path, name: str, reason: str) -> None:
    with pytest.raises(RenderError, match=reason):
        inspect(corpus / name, "pdf")


def test_image_is_one_page(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.new("L", (300, 200), 128).save(path)
    assert inspect(path, "image").pages == 1
    [page] = list(iter_pages(path, "image"))
    assert page.image.mode == "RGB" and page.image.size == (300, 200) and page.text == ""


def test_broken_image_is_a_render_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(RenderError, match="cannot be decoded"):
        inspect(path, "image")


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is not installed")
def test_pdf2image_renderer_matches_pypdfium2_size(corpus: Path) -> None:
    path = corpus / "nics-background-checks-2015-11.pdf"
    [a] = list(iter_pages(path, "pdf", renderer="pdf2image", dpi=72))
    [b] = list(iter_pages(path, "pdf", renderer="pypdfium2", dpi=72))
    assert abs(a.image.width - b.image.width) <= 2 and abs(a.image.height - b.image.height) <= 2
    assert a.text == b.text  # the text layer always comes from PDFium


def test_unknown_renderer_names_the_setting(corpus: Path) -> None:
    with pytest.raises(RenderError, match="PAGERAG_RENDERER"):
        list(iter_pages(corpus / "hello_structure.pdf", "pdf", renderer="ghostscript"))
