"""Pages to images: pypdfium2 by default (no system dependency, faster), pdf2image on request.

The text layer always comes from pypdfium2: poppler's renderer gives images only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image, UnidentifiedImageError

RENDERERS = ("pypdfium2", "pdf2image")


class RenderError(Exception):
    """A file that cannot be turned into pages; the message says why in plain words."""


@dataclass(frozen=True)
class RenderedPage:
    number: int  # 1-based
    image: Image.Image
    text: str


@dataclass(frozen=True)
class OpenedDocument:
    pages: int
    title: str


def _pdfium_reason(exc: Exception) -> str:
    msg = str(exc)
    if "password" in msg.lower():
        return "the PDF is encrypted with a password; decrypt it (e.g. `qpdf --decrypt`) first"
    if "format" in msg.lower():
        return "the PDF is damaged or not a PDF (PDFium: data format error)"
    return f"PDFium cannot open the PDF ({msg})"


def open_pdf(path: Path) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        raise RenderError(_pdfium_reason(exc)) from exc


def inspect(path: Path, kind: str) -> OpenedDocument:
    """Page count and title, or a RenderError saying why the file cannot be read."""
    if kind == "image":
        _load_image(path)
        return OpenedDocument(pages=1, title=path.stem)
    pdf = open_pdf(path)
    try:
        count = len(pdf)
        if count == 0:
            raise RenderError("the PDF has no pages")
        title = (pdf.get_metadata_dict().get("Title") or "").strip() or path.stem
        return OpenedDocument(pages=count, title=title)
    finally:
        pdf.close()


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise RenderError(f"the image cannot be decoded ({exc})") from exc


def iter_pages(
    path: Path,
    kind: str,
    *,
    renderer: str = "pypdfium2",
    dpi: int = 144,
    skip: set[int] | None = None,
) -> Iterator[RenderedPage]:
    """Render pages one at a time (bounded memory), skipping the page numbers in `skip`."""
    skip = skip or set()
    if kind == "image":
        if 1 not in skip:
            yield RenderedPage(1, _load_image(path), "")
        return
    if renderer not in RENDERERS:
        raise RenderError(
            f"unknown renderer {renderer!r}; set PAGERAG_RENDERER to one of {RENDERERS}"
        )
    pdf = open_pdf(path)
    try:
        for index in range(len(pdf)):
            number = index + 1
            if number in skip:
                continue
            page = pdf[index]
            try:
                text = _page_text(page)
                if renderer == "pypdfium2":
                    image = page.render(scale=dpi / 72).to_pil().convert("RGB")
                else:
                    image = _render_poppler(path, number, dpi)
            except pdfium.PdfiumError as exc:
                raise RenderError(f"page {number} cannot be rendered ({exc})") from exc
            finally:
                page.close()
            if image.width < 8 or image.height < 8:
                raise RenderError(f"page {number} rendered to a degenerate {image.size} image")
            yield RenderedPage(number, image, text)
    finally:
        pdf.close()


def _page_text(page: pdfium.PdfPage) -> str:
    textpage = page.get_textpage()
    try:
        # PDFium ends lines with CRLF; keep plain newlines and drop NULs some fonts produce.
        return textpage.get_text_bounded().replace("\r\n", "\n").replace("\x00", "").strip()
    finally:
        textpage.close()


def _render_poppler(path: Path, number: int, dpi: int) -> Image.Image:
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError, PDFPageCountError

    if shutil.which("pdftoppm") is None:
        raise RenderError(
            "PAGERAG_RENDERER=pdf2image needs poppler's pdftoppm; install poppler-utils "
            "or use the default PAGERAG_RENDERER=pypdfium2"
        )
    try:
        images = convert_from_path(path, dpi=dpi, first_page=number, last_page=number)
    except (PDFInfoNotInstalledError, PDFPageCountError) as exc:
        raise RenderError(f"poppler cannot render page {number} ({exc})") from exc
    if not images:
        raise RenderError(f"poppler returned no image for page {number}")
    return images[0].convert("RGB")
